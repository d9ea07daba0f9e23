"""Rollouts: sample answers with the KV-cached batched decoder, then score their tokens.

Sampling is *pure*: the softmax of the logits divided by the temperature, no top-k, top-p or
min-p. The log-probabilities PPO and GRPO compare (policy now, policy at rollout time,
reference) are those of the same temperature-scaled distribution, so the KL estimates and
the importance ratios refer to the distribution the tokens really came from; a truncating
filter would make the sampled distribution differ from the one whose log-probs are used.

A rollout row is ``[left padding][prompt][response][end token][right padding]``: prompts are
left-padded (``generate.loop.left_pad``), so every response starts in the same column. A
response ends at the first end id, which is kept as its last token (the reward is added
there and the policy learns to stop); one that never produced an end id ends after
``max_new_tokens`` and counts as unfinished (``ended`` False), which the reward penalises.

Sampling uses a generator seeded from (seed, step), so the same seed gives the same rollouts
and a resumed run draws exactly what the uninterrupted one drew, with no generator state to
save.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchllm.data.instruction import encode_example
from scratchllm.finetune.logprobs import token_logprobs_entropy
from scratchllm.finetune.rl.prompts import Prompt
from scratchllm.generate.loop import decode_steps, eval_mode, left_pad, make_picker
from scratchllm.model.loss import head_of


@dataclass
class Rollout:
    """A batch of sampled answers and everything needed to score their tokens again."""

    sequences: torch.Tensor      # (B, P + R) token ids
    attention: torch.Tensor      # (B, P + R) 1 on real tokens, 0 on padding
    response_mask: torch.Tensor  # (B, R) float: 1 on the response's tokens (end token included)
    prompt_width: int            # P
    ended: torch.Tensor          # (B,) bool: the response produced an end id
    responses: list[str]         # decoded answers (without the end token)
    prompts: list[Prompt]

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1).long()

    @property
    def response_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width:]

    def select(self, index: torch.Tensor) -> "Rollout":
        """The rows ``index`` (a PPO minibatch)."""
        rows = index.tolist()
        return Rollout(self.sequences[index], self.attention[index], self.response_mask[index],
                       self.prompt_width, self.ended[index], [self.responses[i] for i in rows],
                       [self.prompts[i] for i in rows])


def encode_prompt(prompt: Prompt, tokenizer: Any, style: str, keep: int) -> list[int]:
    """The prompt's ids as ``finetune instruct`` encodes them, cut to the last ``keep``."""
    if style == "raw":
        ids = tokenizer.encode_ordinary(prompt.model_text)
    else:
        ids = encode_example(prompt.entry, tokenizer, style, response_key=None)["ids"]
    return ids[-keep:] if keep > 0 else ids


def step_generator(seed: int, step: int, device: torch.device, stream: int = 0
                   ) -> torch.Generator:
    """A generator of one step: a pure function of (seed, step, stream); stream 0 samples
    the rollouts, stream 1 shuffles the minibatches."""
    # Hashed into 32 bits: the CPU generator (Mersenne Twister) keeps only a seed's low 32
    # bits, so (seed, step) packed into one big integer would lose the seed.
    mixed = np.random.SeedSequence([seed % 2**32, step, stream]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(mixed))


@torch.no_grad()
def sample_rollout(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt],
                   prompt_ids: Sequence[list[int]], *, max_new_tokens: int, temperature: float,
                   eos_ids: Sequence[int], generator: torch.Generator) -> Rollout:
    """Sample one answer per prompt (repeat a prompt to get several) with the KV cache."""
    device = next(model.parameters()).device
    ids, mask = left_pad([list(p) for p in prompt_ids], device)
    batch, width = ids.shape
    if mask is None:
        mask = torch.ones_like(ids)
    pick = make_picker(temperature, None, None, None, None, generator, device)
    eos = torch.tensor(list(eos_ids), device=device)
    columns: list[torch.Tensor] = []
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    with eval_mode(model):
        for next_ids in decode_steps(model, ids, max_new_tokens, pick, attention_mask=mask):
            columns.append(next_ids.clone())
            done |= torch.isin(next_ids, eos)
            if bool(done.all()):
                break
    tokens = torch.stack(columns, dim=1)                       # (B, R)
    is_end = torch.isin(tokens, eos)
    ended = is_end.any(dim=1)
    first_end = torch.where(ended, is_end.float().argmax(dim=1), torch.full_like(ended, -1,
                                                                                 dtype=torch.long))
    length = torch.where(ended, first_end + 1, torch.full_like(first_end, tokens.shape[1]))
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
    response_mask = (positions < length.unsqueeze(1)).long()
    fill = int(eos[0]) if len(eos) else 0
    tokens = torch.where(response_mask.bool(), tokens, torch.full_like(tokens, fill))
    texts = [tokenizer.decode(row[: int(n) - int(e)]).strip()
             for row, n, e in zip(tokens.tolist(), length.tolist(), ended.tolist())]
    return Rollout(torch.cat([ids, tokens], dim=1), torch.cat([mask, response_mask], dim=1),
                   response_mask.float(), width, ended, texts, list(prompts))


@contextmanager
def captured_hidden(model: nn.Module):
    """Collect the final norm's output (the hidden states the head reads) during a forward."""
    store: dict[str, torch.Tensor] = {}
    handle = model.final_norm.register_forward_hook(
        lambda module, args, output: store.__setitem__("hidden", output))
    try:
        yield store
    finally:
        handle.remove()


def score_tokens(model: nn.Module, rollout: Rollout, temperature: float, *,
                 value_head: nn.Module | None = None, with_entropy: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Log-probs (B, R) of the response tokens under ``model``'s temperature-scaled softmax.

    Also ``values`` (B, R) when a ``value_head`` is given: V of the state before each response
    token, read from the final hidden state at the position that predicts it; and ``entropy``
    (B, R) of that position's distribution when asked. The vocabulary head runs over the
    response positions only, a few hundred at a time: a (B, R, vocab) fp32 log-softmax is
    200 MB per 1,000 positions at GPT-2's vocabulary, and the PPO/GRPO minibatch passes would
    also keep it for the backward pass.
    """
    start = rollout.prompt_width - 1
    head = head_of(model)
    if head is None:  # no separable head: full logits
        with captured_hidden(model) as store:
            logits = model(rollout.sequences, attention_mask=rollout.attention)
        hidden = store["hidden"][:, start:-1]
        logp_all = torch.log_softmax(logits[:, start:-1].float() / temperature, dim=-1)
        out = {"logprobs": logp_all.gather(-1, rollout.response_tokens.unsqueeze(-1)).squeeze(-1)}
        if with_entropy:
            out["entropy"] = -(logp_all.exp() * logp_all).sum(dim=-1)
    else:  # the head over response positions only, a few at a time (finetune.logprobs)
        hidden = model(rollout.sequences, attention_mask=rollout.attention,
                       return_hidden=True)[:, start:-1]
        logps, entropy = token_logprobs_entropy(hidden, head, rollout.response_tokens,
                                                temperature=temperature,
                                                with_entropy=with_entropy)
        out = {"logprobs": logps} if entropy is None else {"logprobs": logps, "entropy": entropy}
    if value_head is not None:
        out["values"] = value_head(hidden).squeeze(-1).float()
    return out
