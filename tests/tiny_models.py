"""Tiny random HF causal LMs with their own trained tokenizers, written as real model folders.

Two flavours with different tokenizers, templates, vocabularies and architectures, so tests can
pair a student and a teacher that share nothing but text:

- ``"bytelevel"``: byte-level BPE (GPT-2/Qwen style) + ChatML template, a pad token, Qwen2 model.
- ``"metaspace"``: BPE over Metaspace words (SentencePiece style with a prefix space on the first
  word, as Llama-2/Mistral; ``<unk>`` for unseen characters) + a Llama-3-like template that writes
  the BOS token into the rendered text (and a tokenizer that also adds BOS by itself unless
  ``add_special_tokens=False``), no pad token, untied Llama model.

Everything is built offline in well under a second; folders are saved with safetensors.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
FLAVOURS = ("bytelevel", "metaspace")

# Enough text for BPE merges; every printable ASCII character appears, so only exotic characters
# are unknown to the metaspace tokenizer.
CORPUS = [
    "rev abcdef",
    "sort 3 1 2",
    "123+456=579",
    "The quick brown fox jumps over the lazy dog.",
    "Answer the question. Which option is better? A or B",
    "hello world, hello teacher, hello student",
    string.printable,
] * 4


def _bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    specials = [
        "<unk>",
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=220, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def make_tokenizer(flavour: str) -> PreTrainedTokenizerFast:
    """The trained tokenizer of a flavour (deterministic: BPE training has no randomness)."""
    if flavour == "bytelevel":
        return _bytelevel_tokenizer()
    if flavour == "metaspace":
        return _metaspace_tokenizer()
    raise ValueError(f"flavour={flavour!r}: valid: {', '.join(FLAVOURS)}")


def _config(flavour: str, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=256,
    )
    if flavour == "bytelevel":
        return Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            **ids,
        )
    return LlamaConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        **ids,
    )


def make_tiny_lm(
    path: str | Path,
    flavour: str,
    seed: int = 0,
    chat_template: bool = True,
    scale: float = 1.0,
) -> Path:
    """Write a random tiny causal LM + tokenizer of `flavour` to the folder `path`; returns it.

    `chat_template=False` saves the tokenizer without a template (to test the start-up refusal).
    `scale` multiplies every non-norm weight: large values make outputs depend strongly on the
    input (near-uniform random models hide padding bugs behind ties).
    """
    path = Path(path)
    tokenizer = make_tokenizer(flavour)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(flavour, tokenizer))
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.mul_(scale)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not chat_template:
        tokenizer.chat_template = None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
