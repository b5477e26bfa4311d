"""Tests for the toy character tokenizer and its chat template (pad_lightning.zoo.tokenizer)."""

from __future__ import annotations

from transformers import AutoTokenizer

from pad_lightning.zoo.tokenizer import CHARACTERS, SPECIAL_TOKENS

CONVERSATION = [
    {"role": "user", "content": "rev abc"},
    {"role": "assistant", "content": "cba"},
]


def test_round_trip_printable(tok):
    texts = [
        "".join(CHARACTERS),
        "Hello, World! 123",
        "a , b . c ' d",  # no tokenization-space clean-up
        "  leading and trailing  ",
        "tab\there\nnewline",
        "sort 3 1 2",
    ]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_vocab_layout(tok):
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    # special tokens in text are single tokens
    assert tok("<|user|>x<|end|>", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids("<|user|>"),
        tok.convert_tokens_to_ids("x"),
        tok.convert_tokens_to_ids("<|end|>"),
    ]


def test_chat_template_rendering(tok):
    assert (
        tok.apply_chat_template(CONVERSATION, tokenize=False)
        == "<|user|>rev abc<|end|><|assistant|>cba<|end|>"
    )
    assert (
        tok.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
        == "<|user|>rev abc<|end|><|assistant|>"
    )
    assert (
        tok.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=False)
        == "<|user|>rev abc<|end|>"
    )


def test_eos_and_pad(tok):
    assert tok.eos_token == "<|end|>"
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|end|>")
    assert tok.pad_token == "<pad>"
    assert tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == tok.chat_template
    assert loaded.eos_token == "<|end|>"
    assert loaded.pad_token_id == tok.pad_token_id
    assert loaded.eos_token_id == tok.eos_token_id
    assert len(loaded) == len(tok)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert loaded.apply_chat_template(CONVERSATION, tokenize=False) == rendered
    for text in [rendered, "".join(CHARACTERS), "123+456=", "a , b ."]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == tok.decode(ids)
