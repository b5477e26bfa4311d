"""One causal language model and its tokenizer: chat rendering, sampling and generation,
log-probs and scoring (shared-prefix included), the MCQ judge, loading, saving and sharding.
Imports: runtime, ranking; transformers, peft."""
