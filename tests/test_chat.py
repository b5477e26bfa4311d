"""Tests for prompt/response rendering with a chat template (pad_lightning.chat)."""

from __future__ import annotations

import pytest

from pad_lightning.chat import (
    ChatTemplateError,
    encode_pairs,
    encode_prompt,
    prompt_text,
    response_suffix,
)
from pad_lightning.toy.tokenizer import build_char_tokenizer

PROMPTS = ["rev abc", "sort 3 1 2", [{"role": "user", "content": "12+34="}]]
RESPONSES = [["cba", "", "cb a  "], ["1 2 3", "3"], ["64", "46 "]]


def test_encode_pairs_scored_span(tok):
    pairs = encode_pairs(tok, PROMPTS, RESPONSES)
    assert len(pairs) == sum(len(g) for g in RESPONSES)
    flat = [(p, r) for p, group in zip(PROMPTS, RESPONSES, strict=True) for r in group]
    for pair, (prompt, response) in zip(pairs, flat, strict=True):
        prompt_ids = encode_prompt(tok, prompt)
        assert pair.prompt_len == len(prompt_ids)
        assert pair.ids[: pair.prompt_len] == prompt_ids
        assert tok.decode(pair.ids[pair.prompt_len :]) == response + "<|end|>"
        assert pair.ids[-1] == tok.eos_token_id
        # prompt + scored span is exactly the full rendered conversation
        full = tok.apply_chat_template(
            [*([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)]
            + [{"role": "assistant", "content": response}],
            tokenize=False,
        )
        assert tok.decode(pair.ids) == full


def test_prompt_ids_equal_encode_prompt(tok):
    ids = encode_prompt(tok, "rev abc")
    assert tok.decode(ids) == "<|user|>rev abc<|end|><|assistant|>"
    assert ids == tok(prompt_text(tok, "rev abc"), add_special_tokens=False)["input_ids"]
    assert encode_prompt(tok, [{"role": "user", "content": "rev abc"}]) == ids


def test_trailing_whitespace_after_end_marker_excluded():
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    assert response_suffix(tok, "q", "ans") == "ans<|end|>"
    (pair,) = encode_pairs(tok, ["q"], [["ans"]])
    assert tok.decode(pair.ids[pair.prompt_len :]) == "ans<|end|>"


def test_max_length_truncation(tok):
    (pair,) = encode_pairs(tok, ["rev abc"], [["cba"]], max_length=10)
    assert len(pair.ids) == 10
    assert pair.prompt_len <= len(pair.ids)


def test_missing_chat_template_raises():
    tok = build_char_tokenizer()
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="chat_template"):
        encode_prompt(tok, "rev abc")
    with pytest.raises(ChatTemplateError, match="chat_template"):
        encode_pairs(tok, ["rev abc"], [["cba"]])
    assert issubclass(ChatTemplateError, ValueError)


def test_non_extending_template_raises():
    tok = build_char_tokenizer()
    # the generation prompt adds text that the rendered assistant turn does not start with
    tok.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>Answer: ' }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="does not extend"):
        encode_pairs(tok, ["rev abc"], [["cba"]])


def test_unfinished_responses_are_scored_without_the_end_marker(tok):
    from pad_lightning.chat import encode_pairs

    done, cut = encode_pairs(tok, ["rev abc"], [["cba", "cba"]], finished=[[True, False]])
    assert tok.decode(done.ids[done.prompt_len :]) == "cba<|end|>"
    assert tok.decode(cut.ids[cut.prompt_len :]) == "cba"
    assert done.ids[: done.prompt_len] == cut.ids[: cut.prompt_len]


def test_sentencepiece_style_span_has_no_spurious_word_start():
    # Metaspace tokenizers mark a word start with "▁"; tokenising the span alone would score a
    # "▁" the model never generated after the prompt. The conversation is tokenised as one text.
    from tiny_models import make_tokenizer

    tok = make_tokenizer("metaspace")
    (pair,) = encode_pairs(tok, ["rev abc"], [["cba"]])
    span = tok.convert_ids_to_tokens(pair.ids[pair.prompt_len :])
    assert span == ["c", "b", "a", "<|eot_id|>"]
    alone = tok.convert_ids_to_tokens(tok("cba<|eot_id|>", add_special_tokens=False)["input_ids"])
    assert alone[0] == "▁"  # what the old rule scored
    assert pair.ids[: pair.prompt_len] == encode_prompt(tok, "rev abc")


def test_merge_across_the_boundary_falls_back_to_separate_tokenisation(tok, monkeypatch):
    # if tokenising prompt + span as one text changed the prompt's ids, the prompt ids are kept
    real_call = type(tok).__call__

    def merging_call(self, text, **kwargs):
        out = real_call(self, text, **kwargs)
        if isinstance(text, list):  # the joint texts: pretend the last prompt token merged
            for ids in out["input_ids"]:
                ids[len(encode_prompt(tok, "rev ab")) - 1] = 0
        return out

    monkeypatch.setattr(type(tok), "__call__", merging_call)
    (pair,) = encode_pairs(tok, ["rev ab"], [["ba"]])
    monkeypatch.undo()
    assert pair.ids[: pair.prompt_len] == encode_prompt(tok, "rev ab")
    span = tok.decode(pair.ids[pair.prompt_len :])
    assert span == "ba<|end|>"
