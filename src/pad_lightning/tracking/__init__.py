"""MLflow: the store, run names and tags, the run logger, artifacts in and out.
Imports: runtime and the layers below it; mlflow."""
