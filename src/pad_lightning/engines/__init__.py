"""Out-of-process engines: model servers a run talks to (a served teacher, the vLLM rollout engine)."""
