"""The application: config checks, the experiment as named phases, resume, sweeps and the Hydra
job. Imports: every layer. The entry points `run`, `generate` and `compare` sit above it."""
