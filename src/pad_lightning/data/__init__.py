"""Prompt sets (files, hub datasets), the toy tasks and their verifier, answer metrics.
Imports: runtime, ranking, lm."""
