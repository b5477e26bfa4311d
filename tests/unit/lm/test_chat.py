"""Tests for prompt/response rendering with a chat template (pad_lightning.lm.chat)."""

from __future__ import annotations

import pytest

from pad_lightning.lm.chat import (
    ChatTemplateError,
    check_end_marker,
    encode_pairs,
    encode_prompt,
    prompt_text,
    response_suffix,
    unfinished_suffix,
)
from pad_lightning.zoo.tokenizer import build_char_tokenizer

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
    (pair,) = encode_pairs(tok, ["rev abc"], [["cba"]], max_length=12)  # a 10-token prompt
    assert len(pair.ids) == 12
    assert pair.prompt_len == 10
    # a limit that would cut the whole span is refused (the empty span would score 0, the best)
    with pytest.raises(ValueError, match="max_length=10 leaves no scored token"):
        encode_pairs(tok, ["rev abc"], [["cba"]], max_length=10)


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
    from pad_lightning.lm.chat import encode_pairs

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


# -- the scored span is never empty -------------------------------------------------------------

TOKENIZERS = ["toy", "bytelevel", "metaspace"]


def _tokenizer(name: str):
    from tiny_models import make_tokenizer

    return build_char_tokenizer() if name == "toy" else make_tokenizer(name)


def _span(tok, pair) -> list[str]:
    return tok.convert_ids_to_tokens(pair.ids[pair.prompt_len :])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_empty_finished_answer_is_scored_on_the_end_marker(name):
    tok = _tokenizer(name)
    (pair,) = encode_pairs(tok, ["rev abc"], [[""]])
    assert _span(tok, pair) == [tok.eos_token]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_truncated_empty_text_is_scored_with_the_end_marker(name):
    # Cut at max_new_tokens with no text (e.g. special tokens dropped by the old decoding): the
    # span without the marker would be empty, and an empty span scores 0, the best reward.
    tok = _tokenizer(name)
    assert unfinished_suffix(tok, "rev abc", "") == response_suffix(tok, "rev abc", "")
    done, cut = encode_pairs(tok, ["rev abc"], [["", ""]], finished=[[True, False]])
    assert done.ids == cut.ids
    assert _span(tok, cut) == [tok.eos_token]
    # a cut response with text is still scored without the marker
    (cut,) = encode_pairs(tok, ["rev abc"], [["cba"]], finished=[[False]])
    assert tok.eos_token_id not in cut.ids[cut.prompt_len :]


def test_truncated_text_the_template_trims_away_is_scored_with_the_end_marker():
    from tiny_models import make_tokenizer

    tok = make_tokenizer("metaspace")  # its Llama-3-like template trims the content
    (cut,) = encode_pairs(tok, ["rev abc"], [["  "]], finished=[[False]])
    assert _span(tok, cut) == ["<|eot_id|>"]


def test_cut_text_that_encodes_to_no_token_is_scored_with_the_end_marker(tok, monkeypatch):
    # the token-level guard: a non-empty cut text whose tokens all vanish still scores the marker
    real_call = type(tok).__call__

    def dropping_call(self, text, **kwargs):
        strip = lambda t: t.replace("~", "")  # noqa: E731  (a normaliser that deletes "~")
        return real_call(
            self, [strip(t) for t in text] if isinstance(text, list) else strip(text), **kwargs
        )

    monkeypatch.setattr(type(tok), "__call__", dropping_call)
    (cut,) = encode_pairs(tok, ["rev abc"], [["~"]], finished=[[False]])
    monkeypatch.undo()
    assert _span(tok, cut) == ["<|end|>"]


NO_END_MARKER = (  # the toy template without <|end|> after the assistant turn
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if m['role'] != 'assistant' %}{{ '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def test_template_without_end_marker_is_refused():
    tok = build_char_tokenizer()
    tok.chat_template = NO_END_MARKER
    assert response_suffix(tok, "q", "ans") == "ans"  # renders and extends the prompt, but
    with pytest.raises(ChatTemplateError) as info:
        check_end_marker(tok, "model.teacher.chat_template")
    message = str(info.value)
    assert "\n" not in message
    assert "end-of-turn marker" in message and "set model.teacher.chat_template" in message
    assert repr(tok.name_or_path) in message
    # the last line of defence, should such a template get past the start-up check
    with pytest.raises(ChatTemplateError, match="no token to score"):
        encode_pairs(tok, ["rev abc"], [[""]])
    with pytest.raises(ChatTemplateError, match="no token to score"):
        encode_pairs(tok, ["rev abc"], [["cba", ""]], finished=[[True, False]])
    check_end_marker(build_char_tokenizer())  # the toy template closes the turn with <|end|>


@pytest.mark.parametrize("name", TOKENIZERS)
def test_special_tokens_survive_decoding_and_are_scored(name):
    """ids -> text with special tokens -> the same ids, alone and as the scored span: what is
    scored is what was generated, special tokens included (`rollout.generate` decodes so)."""
    tok = _tokenizer(name)
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    specials = [t for t in specials if t not in (tok.eos_token, tok.unk_token)]
    special_ids = set(tok.convert_tokens_to_ids(specials))
    texts = [
        specials[-1] * 3,  # nothing but special tokens: no text at all once they are dropped
        f"{specials[0]}ab c{specials[-1]}{specials[-1]} x",
        f"a {specials[-1]} b",
    ]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        decoded = tok.decode(ids, skip_special_tokens=False)
        assert tok(decoded, add_special_tokens=False)["input_ids"] == ids
        (pair,) = encode_pairs(tok, ["rev abc"], [[text]], finished=[[False]])
        span = pair.ids[pair.prompt_len :]
        assert special_ids & set(span)
        decoded = tok.decode(span, skip_special_tokens=False)
        (again,) = encode_pairs(tok, ["rev abc"], [[decoded]], finished=[[False]])
        assert again.ids == pair.ids, (text, decoded)
        (done,) = encode_pairs(tok, ["rev abc"], [[decoded]])
        assert done.ids == pair.ids + [tok.eos_token_id]
    assert tok.decode(tok(texts[0])["input_ids"], skip_special_tokens=True).strip() == ""


def test_same_tokenizer():
    import copy

    from tiny_models import make_tokenizer

    from pad_lightning.lm.chat import same_tokenizer

    tok = build_char_tokenizer()
    assert same_tokenizer(tok, tok)
    assert same_tokenizer(tok, build_char_tokenizer())  # rebuilt: equal content
    other = copy.deepcopy(tok)
    other.chat_template = tok.chat_template.replace("<|assistant|>", "<|assistant|> ")
    assert not same_tokenizer(tok, other)
    assert not same_tokenizer(make_tokenizer("bytelevel"), make_tokenizer("metaspace"))
    assert same_tokenizer(make_tokenizer("bytelevel"), make_tokenizer("bytelevel"))
