"""pad-lightning: Preference-Aligned Distillation experiments on Lightning, Hydra and MLflow."""

__version__ = "0.1.0"
