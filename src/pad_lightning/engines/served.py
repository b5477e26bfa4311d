"""A causal LM served out of process, behind an OpenAI-compatible completions endpoint.

`ServedLM` stands where a local model stands in the three operations a run asks of a model
without gradients, and those entry points hand it the work (`lm.scoring.score_pairs`,
`lm.judge.option_log_probs`, `lm.generation.generate`):

* sequence rewards of encoded pairs: the server's log-probability of every prompt token
  (`echo` with `logprobs: 0`), averaged over each pair's scored span by the same rule;
* MCQ option log-probabilities: each option letter appended to the question, its echoed
  log-probability read (k short requests that share the question's prefix in the server's
  cache), renormalised over the letters as the local path does;
* samples: `n` completions per prompt from the prompt's token ids, with the run's temperature,
  top-p, top-k, maximum length and stop tokens, cut and decoded by the local rule.

Token ids, never text, are sent: the server scores exactly the tokens the local path would (the
start-up check compares the two tokenizers on a probe). Its weights live on the server: the module
holds one empty parameter, so that device and dtype queries, `.eval()`, `.to()` and parameter
counts (0) work as for a local model.
"""

from __future__ import annotations

import math

import torch

from pad_lightning.engines.openai_api import Client, logprob_list, sorted_choices
from pad_lightning.runtime.errors import ServiceError


def token_budget(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices in request-sized groups of at most `max_tokens` tokens (at least one each)."""
    groups, current, size = [], [], 0
    for i, length in enumerate(lengths):
        if current and size + length > max_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += length
    return groups + ([current] if current else [])


class ServedLM(torch.nn.Module):
    """A model on a server pool (`client`) under the name `model` (see the module docstring)."""

    def __init__(self, client: Client, model: str, max_model_len: int | None = None):
        super().__init__()
        self.client, self.model_name, self.max_model_len = client, model, max_model_len
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.generation_config = None
        self.request_tokens = 8192  # prompt tokens per scoring request
        self.option_by_echo = False  # MCQ options by echo (a server without allowed_token_ids)
        self.parameter_count: int | None = None  # as stored in its folder, where known

    def forward(self, *args, **kwargs):
        raise TypeError(
            f"{self.client.what}: a served model has no local forward pass (its weights are on "
            f"{', '.join(self.client.urls)}); this objective needs a local model"
        )

    # -- scoring ---------------------------------------------------------------------------
    def token_log_probs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(ids[t] | ids[<t]) of every sequence, position 0 set to 0; in order."""
        for ids in sequences:
            if self.max_model_len and len(ids) + 1 > self.max_model_len:
                raise ServiceError(
                    f"{self.client.what}: a sequence of {len(ids)} tokens is longer than the "
                    f"server's max_model_len {self.max_model_len}; start it with a larger "
                    "--max-model-len or lower rollout.max_new_tokens"
                )
        groups = token_budget([len(s) for s in sequences], self.request_tokens)
        bodies = [
            {
                "model": self.model_name,
                "prompt": [sequences[i] for i in group],
                "max_tokens": 1,
                "echo": True,
                "logprobs": 0,
                "temperature": 0,
            }
            for group in groups
        ]
        out: list[list[float]] = [[] for _ in sequences]
        for group, answer in zip(groups, self.client.map("/v1/completions", bodies), strict=True):
            what = f"{self.client.what} (prompt log-probabilities)"
            for i, choice in zip(group, sorted_choices(answer, len(group), what), strict=True):
                logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
                values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
                out[i] = logprob_list(values, what, len(sequences[i]))
        return out

    def score_pairs(self, pairs: list) -> torch.Tensor:
        """Length-normalised log-likelihood of each pair's scored span (`lm.chat.EncodedPair`:
        ids and prompt_len), [N] (float32); NaN or
        inf where the server said so (refused downstream like local non-finite scores)."""
        for p in pairs:
            if len(p.ids) <= p.prompt_len:
                raise ValueError("a pair has no scored token (empty response span)")
        token_logp = self.token_log_probs([p.ids for p in pairs])
        rewards = [
            math.fsum(lp[p.prompt_len :]) / (len(p.ids) - p.prompt_len)
            for p, lp in zip(pairs, token_logp, strict=True)
        ]
        return torch.tensor(rewards, dtype=torch.float32)

    def option_log_probs(self, prompts: list[list[int]], option_ids: list[int]) -> torch.Tensor:
        """log p(option | prompt) renormalised over `option_ids`, [M, k].

        Per option letter, one request per chunk of prompts asks for one token restricted to
        that letter (`allowed_token_ids`, greedy) and reads its log-probability, which vLLM
        reports from the model's raw distribution: only each prompt's last position is computed
        and the prompts' cached prefixes are reused. A server that does not honour the
        restriction (another token comes back) is asked by echo instead: each prompt with the
        letter appended, the letter's echoed log-probability (every position computed)."""
        k = len(option_ids)
        if self.option_by_echo:
            rows = [p + [o] for p in prompts for o in option_ids]
            last = [lp[-1] for lp in self.token_log_probs(rows)]
            return torch.tensor(last, dtype=torch.float64).view(-1, k).log_softmax(-1).float()
        groups = token_budget([len(p) for p in prompts], self.request_tokens)
        bodies = [
            {
                "model": self.model_name,
                "prompt": [prompts[i] for i in group],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": 0,
                "allowed_token_ids": [option],
                "return_token_ids": True,
            }
            for option in option_ids
            for group in groups
        ]
        answers = self.client.map("/v1/completions", bodies)
        out = torch.empty(len(prompts), k, dtype=torch.float64)
        what = f"{self.client.what} (option log-probabilities)"
        for j, body in enumerate(bodies):
            option, group = body["allowed_token_ids"][0], groups[j % len(groups)]
            for i, choice in zip(group, sorted_choices(answers[j], len(group), what), strict=True):
                ids = choice.get("token_ids") if isinstance(choice, dict) else None
                if ids != [option]:
                    self.option_by_echo = True  # the restriction was not honoured
                    return self.option_log_probs(prompts, option_ids)
                logprobs = choice.get("logprobs")
                values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
                if not isinstance(values, list) or not values or values[0] is None:
                    raise ServiceError(f"{what}: malformed log-probabilities: {values!r:.80}")
                out[i, option_ids.index(option)] = logprob_list(values, what, 1)[0]
        return out.log_softmax(-1).float()

    # -- sampling --------------------------------------------------------------------------
    def sample_ids(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        top_k: int,
        max_new_tokens: int,
        stops: list[int],
    ) -> list[list[int]]:
        """The generated ids of `n` samples per prompt (prompt-major, the stop token kept where
        one ended a sample); temperature 0 is greedy.

        One request per prompt, each with its own seed drawn from torch's generator (seeded by
        the run, so a run asks the same requests again): a server seeds the n samples of one
        request seed, seed + 1, ..., and would give every prompt of a batched request the same
        seeds, correlating their samples. The server batches concurrent requests itself."""
        longest = max((len(p) for p in prompts), default=0)
        if self.max_model_len and longest + max_new_tokens > self.max_model_len:
            raise ServiceError(
                f"{self.client.what}: a prompt of {longest} tokens plus {max_new_tokens} new "
                f"ones exceeds the server's max_model_len {self.max_model_len}; start it with a "
                "larger --max-model-len or lower rollout.max_new_tokens"
            )
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        bodies = [
            {
                "model": self.model_name,
                "prompt": ids,
                "n": n,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "stop_token_ids": stops,
                "skip_special_tokens": False,
                "return_token_ids": True,
                "seed": seed,
            }
            for ids, seed in zip(prompts, seeds, strict=True)
        ]
        out = []
        what = f"{self.client.what} (samples)"
        for answer in self.client.map("/v1/completions", bodies):
            for choice in sorted_choices(answer, n, what):
                ids = choice.get("token_ids") if isinstance(choice, dict) else None
                if not isinstance(ids, list) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids
                ):
                    raise ServiceError(
                        f"{what}: a choice without token_ids (the client asks for "
                        "return_token_ids, which vLLM serves)"
                    )
                out.append(ids[:max_new_tokens])
        return out
