"""Rendering prompts and responses with a model's own chat template, as token ids.

Scoring rule (documented in the README and tested): the scored span of a response is the text
the chat template puts after the generation prompt when the response is the assistant turn —
the response itself plus the template's end-of-turn marker — with trailing whitespace removed.
The conversation (prompt + scored span) is tokenised as one text, as the model saw such text in
training; if that changes the prompt's own ids (a merge across the boundary), prompt and span are
tokenised separately and concatenated instead. Either way the prompt prefix is token-identical to
what generation was conditioned on. (Tokenising the span alone would add a spurious word-start
marker in SentencePiece-style tokenizers: "cba" -> "▁cba".)

The scored span is never empty, so no response can earn the best possible reward (0) by being
empty: the response text is what was generated, special tokens included (`rollout.generate`); a
response cut at the token limit is scored without the end-of-turn marker unless that leaves no
token, in which case it is scored like the empty answer, on the marker; and a template that adds
no end-of-turn marker after an empty assistant turn is refused (`check_end_marker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.runtime.errors import ModelError


class ChatTemplateError(ModelError):
    """A tokenizer whose chat template cannot render prompt/response pairs as we need."""


_SAME: dict[tuple[int, int], tuple[object, object, bool]] = {}


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether `a` and `b` turn every conversation into the same token ids: the same object,
    or the same fast tokenizer (vocabulary, merges, normalizer, pre-tokenizer, added tokens:
    its serialised form), chat template and special tokens. Cached per pair of objects."""
    if a is b:
        return True
    key = (id(a), id(b))
    if key in _SAME and _SAME[key][0] is a and _SAME[key][1] is b:
        return _SAME[key][2]
    same = (
        getattr(a, "is_fast", False)
        and getattr(b, "is_fast", False)
        and a.chat_template == b.chat_template
        and a.special_tokens_map == b.special_tokens_map
        and a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    )
    _SAME[key] = (a, b, bool(same))
    return bool(same)


def padded(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple:
    """(ids, attention mask), both [len(rows), longest] long tensors: each row right-padded with
    `pad_id` (left-padded with `left`, as generation and a shared prompt cache need)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return ids, mask


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding (padded positions are masked, so any id is correct)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> str:
    """The conversation up to and including the generation prompt of the assistant turn."""
    if not tokenizer.chat_template:
        raise ChatTemplateError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; "
            "set model.<student|teacher>.chat_template"
        )
    return tokenizer.apply_chat_template(
        _messages(prompt), tokenize=False, add_generation_prompt=True
    )


def response_suffix(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    prefix: str | None = None,
) -> str:
    """Text the template adds after the generation prompt for `response` (end marker included)."""
    prefix = prompt_text(tokenizer, prompt) if prefix is None else prefix
    full = tokenizer.apply_chat_template(
        [*_messages(prompt), {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prefix):
        raise ChatTemplateError(
            f"chat template of {tokenizer.name_or_path!r} renders the assistant turn so that it "
            "does not extend the generation prompt; override model.<role>.chat_template"
        )
    return full[len(prefix) :].rstrip()


def end_marker(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict] = "2+2=", prefix: str | None = None
) -> str:
    """The text the template closes an empty assistant turn with (the empty answer's span)."""
    return response_suffix(tokenizer, prompt, "", prefix)


def check_end_marker(
    tokenizer: PreTrainedTokenizerBase, key: str = "model.<role>.chat_template"
) -> None:
    """Refuse a template that adds nothing after the generation prompt for an empty assistant
    turn: an empty response would have no scored token (and the best possible reward, 0)."""
    if not end_marker(tokenizer):
        raise ChatTemplateError(
            f"chat template of {tokenizer.name_or_path!r} adds no end-of-turn marker after an "
            f"empty assistant turn, so an empty response would have nothing to score; set {key} "
            "to a template that closes the assistant turn (e.g. with the EOS token)"
        )


@dataclass
class EncodedPair:
    """Token ids of prompt + response; ids[prompt_len:] is the scored span."""

    ids: list[int]
    prompt_len: int


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def unfinished_suffix(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    prefix: str | None = None,
) -> str:
    """The scored text of a response that hit the token limit: no end-of-turn marker.

    The marker is the text the template closes an empty assistant turn with; scoring it after a
    response that never ended would let the student lower such responses' reward by making the
    marker less likely, i.e. by learning not to stop (measured: truncations grew to 37%).
    If that leaves no text (the response renders as nothing, e.g. whitespace a template trims),
    the response is scored like the empty answer, on the marker: an empty span would earn the
    best possible reward, 0.
    """
    full = response_suffix(tokenizer, prompt, response, prefix)
    closing = end_marker(tokenizer, prompt, prefix)
    cut = full[: len(full) - len(closing)] if closing and full.endswith(closing) else full
    return cut or full


def _encode_after(
    tokenizer: PreTrainedTokenizerBase, prefix_ids: list[int], joint: list[int], suffix: str
) -> list[int]:
    """Prompt + span ids from the joint encoding, or prompt and span encoded separately if the
    joint encoding changed the prompt's ids."""
    if joint[: len(prefix_ids)] == prefix_ids:
        return joint
    return prefix_ids + tokenizer(suffix, add_special_tokens=False)["input_ids"]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | list[dict]],
    responses: list[list[str]],
    max_length: int | None = None,
    finished: list[list[bool]] | None = None,
) -> list[EncodedPair]:
    """Encode every (prompt, response) pair, prompts given once for their n responses.

    `finished[i][j]` False marks a response cut at the generation limit (scored without the
    end-of-turn marker it never produced, unless that leaves no token: then with it); by default
    every response counts as finished. Raises if a scored span is empty (a template without an
    end-of-turn marker, which `check_end_marker` refuses at start-up, or a too small
    `max_length`): its length-normalised reward would be 0, the best possible.
    """
    out: list[EncodedPair] = []
    for i, (prompt, group) in enumerate(zip(prompts, responses, strict=True)):
        prefix = prompt_text(tokenizer, prompt)
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        done = [finished is None or finished[i][j] for j in range(len(group))]
        suffixes = [
            response_suffix(tokenizer, prompt, r, prefix)
            if d
            else unfinished_suffix(tokenizer, prompt, r, prefix)
            for r, d in zip(group, done, strict=True)
        ]
        joint_ids = tokenizer([prefix + s for s in suffixes], add_special_tokens=False)["input_ids"]
        for response, d, joint, suffix in zip(group, done, joint_ids, suffixes, strict=True):
            full = _encode_after(tokenizer, prefix_ids, joint, suffix)
            if len(full) <= len(prefix_ids) and not d:  # a cut text that encodes to no token
                suffix = response_suffix(tokenizer, prompt, response, prefix)
                joint = tokenizer(prefix + suffix, add_special_tokens=False)["input_ids"]
                full = _encode_after(tokenizer, prefix_ids, joint, suffix)
            if len(full) <= len(prefix_ids):
                raise ChatTemplateError(
                    f"response {response!r} has no token to score in the chat template of "
                    f"{tokenizer.name_or_path!r} (it adds no end-of-turn marker after the "
                    "assistant turn); set model.<role>.chat_template"
                )
            if max_length is not None and len(full) > max_length:
                if max_length <= len(prefix_ids):
                    raise ValueError(
                        f"max_length={max_length} leaves no scored token after a prompt of "
                        f"{len(prefix_ids)} tokens"
                    )
                full = full[:max_length]
            out.append(EncodedPair(full, len(prefix_ids)))
    return out
