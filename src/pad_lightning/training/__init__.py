"""Training: rollouts, objectives, the LightningModule and DataModule, evaluation, checkpoints,
the distributed strategy, callbacks and the progress display. Imports: every layer below; lightning."""
