"""A reward model (book ch. 8 / InstructGPT): a language model whose head gives one scalar.

The vocabulary head of any family (GPT-2, Llama, Qwen3) becomes ``Linear(emb_dim, 1)``, read
at the last real token of ``prompt + response + <end>``: the ch. 6 classifier with a single
output (``finetune.classifier_model``). The text is the instruction formatted with the model's
prompt style (Alpaca or Phi-3, as ``finetune instruct/dpo`` write it), then the response, then
one end id (``tokenizer.eot_id``), so the score is always read at the same kind of token, the
one that closes an answer. Sequences longer than the context keep their *last* tokens (the
beginning of the prompt is cut, the response and its end survive).

Where the score is read is the model's ``pooling`` (``finetune.reward_pooling``): ``last``
(above, the default) or ``mean`` (the average over the response tokens and the end id).

Saved reward models are model directories whose config.json metadata has a ``reward_model``
entry (head shape, prompt style, end id, normalisation). ``open_reward_model`` opens one as a
``RewardScorer``, the API that PPO/GRPO (``finetune.rl``) and ``evaluate reward`` use.

Normalisation: ``finetune_reward`` scores the reference policy's answers after training and
stores their mean and std, so ``RewardScorer.score`` returns ``(raw - mean) / std``: 0 on
average and one unit per standard deviation of those answers (see ``finetune.reward``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.data.instruction import check_style, encode_example
from scratchllm.errors import CheckpointError, ConfigError, DataError
from scratchllm.finetune.classifier_model import (
    last_token_logits, load_headed_model, replace_head, resolve_classifier_dir,
)
from scratchllm.finetune.reward_pooling import check_pooling, finish_with_start, pooled_scores
from scratchllm.utils.device import resolve_device
from scratchllm.weights.model_dir import read_header, save_model_dir

REWARD_KEY = "reward_model"  # config.json "metadata" entry of a saved reward model

Prompt = str | dict[str, Any]


def attach_reward_head(model: nn.Module) -> nn.Module:
    """Replace ``model.out_head`` with a zero ``Linear(emb_dim, 1)``: one score per position.

    Zero, not random: the untrained model ties every pair (loss ln 2, accuracy 0), so whatever
    ranking it ends with came from the data, not from a lucky draw of the head. The backbone
    gets gradients from the second step on, once the head is no longer zero.
    """
    replace_head(model, 1)
    nn.init.zeros_(model.out_head.weight)
    nn.init.zeros_(model.out_head.bias)
    return model


def last_real_scores(model: nn.Module, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) reward at each row's last real token; ``attention_mask`` (B, T) is 1 on real tokens.

    Right padding (or none) needs no mask in the forward pass: causal attention never looks
    right, so each row's last real position equals the row run alone. Any other padding (left,
    as batched generation writes it) is passed to the model as an attention mask, which hides
    the pads and counts positions over real tokens only.
    """
    if attention_mask is None:
        return model(input_ids)[:, -1, 0]
    mask = attention_mask.to(device=input_ids.device).bool()
    if mask.shape != input_ids.shape:
        raise DataError(f"attention_mask has shape {tuple(mask.shape)}, input_ids "
                        f"{tuple(input_ids.shape)}; give one 0/1 per token")
    lengths = mask.sum(dim=1)
    if int(lengths.min()) < 1:
        raise DataError("a row of attention_mask has no real token (all zeros); drop it")
    positions = torch.arange(mask.shape[1], device=mask.device)
    if bool((mask == (positions < lengths[:, None])).all()):  # right padding
        return last_token_logits(model, input_ids, lengths)[:, 0]
    logits = model(input_ids, attention_mask=mask.long())
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return logits[torch.arange(len(last), device=logits.device), last, 0]


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), lengths (B,)) with every row padded on the right."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise DataError("every sequence to score needs at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sequences])


def finish_sequence(ids: Sequence[int], end_id: int, limit: int,
                    end_ids: Sequence[int] = ()) -> list[int]:
    """``ids`` without trailing end ids, plus one ``end_id``, keeping the last ``limit`` tokens."""
    return finish_with_start(ids, 0, end_id, limit, end_ids)[0]


def reward_metadata(*, prompt_style: str, end_id: int, emb_dim: int,
                    end_ids: Sequence[int] = (), max_length: int | None = None,
                    normalization: dict | None = None, pooling: str = "last",
                    **extra: Any) -> dict[str, Any]:
    """The config.json ``metadata`` that marks a directory as a reward model.

    ``end_id`` is appended after every response; ``end_ids`` (every end id of the source
    model) are dropped from the end of a response before that, so a generated answer scores
    the same whichever end token it stopped at.
    """
    check_style(prompt_style)
    read_at = ("last real token (the end id after the response)" if check_pooling(pooling) ==
               "last" else "mean over the response tokens and the end id after them")
    return {REWARD_KEY: {"head": [1, int(emb_dim)], "prompt_style": prompt_style,
                         "end_id": int(end_id), "end_ids": [int(i) for i in end_ids],
                         "max_length": max_length, "pooling": pooling, "read_at": read_at,
                         "normalization": normalization, **extra}}


def save_reward_model(out_dir: str | os.PathLike, model: nn.Module, tokenizer: Any,
                      metadata: dict[str, Any], generation: dict | None = None) -> Path:
    """A model directory whose config.json metadata says it is a reward model."""
    if REWARD_KEY not in metadata:
        raise ConfigError("reward model metadata missing; build it with reward_metadata()")
    head = getattr(model, "out_head", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ConfigError("the model's out_head is not a one-output reward head; call "
                          "attach_reward_head(model) first")
    return save_model_dir(out_dir, model, tokenizer, metadata, generation)


def load_reward_model(path: str | os.PathLike, *, device: torch.device | str | None = None
                      ) -> tuple[nn.Module, Any, dict[str, Any], Path]:
    """(model in eval mode, tokenizer, reward metadata, directory) of a saved reward model.

    ``path`` is the model directory or a ``finetune reward`` output folder (its ``model/``).
    """
    directory = resolve_classifier_dir(path)
    header = read_header(directory)
    info = (header.get("metadata") or {}).get(REWARD_KEY)
    if not isinstance(info, dict) or not isinstance(info.get("end_id"), int):
        raise CheckpointError(f"{directory} is not a reward model (its config.json metadata has "
                              "no 'reward_model' entry); train one with `scratchllm finetune "
                              "reward`")
    if info.get("pooling", "last") not in ("last", "mean"):
        raise CheckpointError(f"{directory}: unknown reward pooling {info.get('pooling')!r} in "
                              "config.json; this scratchllm reads 'last' or 'mean'")
    model, tokenizer = load_headed_model(directory, header, 1, device=device)
    return model, tokenizer, info, directory


@dataclass
class RewardScorer:
    """Scores (prompt, response) pairs with a reward model; see ``score`` and ``score_ids``."""

    model: nn.Module
    tokenizer: Any
    info: dict[str, Any]
    source: Path | None = None

    @property
    def prompt_style(self) -> str:
        return self.info.get("prompt_style", "alpaca")

    @property
    def pooling(self) -> str:
        """``last`` (the end token) or ``mean`` (over the response): ``finetune.reward_pooling``."""
        return self.info.get("pooling") or "last"

    @property
    def end_id(self) -> int:
        return int(self.info["end_id"])

    @property
    def limit(self) -> int:
        """Most tokens one scored sequence may hold (the model's context)."""
        return int(self.model.config.context_length)

    @property
    def mean(self) -> float:
        return float((self.info.get("normalization") or {}).get("mean", 0.0))

    @property
    def std(self) -> float:
        return float((self.info.get("normalization") or {}).get("std", 1.0))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, prompt: Prompt, *, formatted: bool = False) -> list[int]:
        """Token ids of a prompt as the reward model was trained to read it."""
        if formatted:
            if not isinstance(prompt, str):
                raise DataError("formatted=True takes prompt texts (str), not entries")
            return self.tokenizer.encode_ordinary(prompt)
        entry = {"instruction": prompt, "input": ""} if isinstance(prompt, str) else prompt
        if not isinstance(entry, dict) or not isinstance(entry.get("instruction"), str):
            raise DataError(f"a prompt must be an instruction string or a dict with "
                            f"'instruction' (and optional 'input'), got {type(prompt).__name__}")
        return encode_example(entry, self.tokenizer, self.prompt_style, response_key=None)["ids"]

    def sequence(self, prompt_ids: Sequence[int], response_ids: Sequence[int]
                 ) -> tuple[list[int], int]:
        """(prompt + response (trailing end ids dropped) + one end id, cut to the context;
        the position where the response starts in it)."""
        return finish_with_start([*prompt_ids, *response_ids], len(prompt_ids), self.end_id,
                                 self.limit, self.info.get("end_ids") or ())

    @torch.no_grad()
    def raw_scores(self, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                   starts: Sequence[int] | None = None) -> torch.Tensor:
        """(N,) float32 CPU head outputs of complete sequences (no normalisation).

        ``starts[i]``: where the response begins in ``sequences[i]``; a ``mean`` reward model
        needs it (``last`` ignores it). Batches are formed in order of length (longest
        first), so little is padding; each score is the same as the sequence's alone,
        whatever it is batched with.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if starts is not None and len(starts) != len(sequences):
            raise DataError(f"{len(sequences)} sequences but {len(starts)} response starts")
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out = torch.zeros(len(sequences))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                ids, lengths = right_padded([sequences[i] for i in rows], self.end_id)
                row_starts = None if starts is None else torch.tensor([starts[i] for i in rows])
                scores = pooled_scores(self.model, ids.to(self.device), lengths, row_starts,
                                       self.pooling)
                out[rows] = scores.float().cpu()
        finally:
            self.model.train(was_training)
        return out

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def score_ids(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                  batch_size: int = 8, *, normalize: bool = True) -> torch.Tensor:
        """(N,) scores of token-id pairs (tokens of *this* reward model's tokenizer).

        ``prompt_ids[i]`` is the formatted prompt ending with the response header (e.g.
        ``encode_example(entry, tok, style, response_key=None)["ids"]``, what generation is
        fed); ``response_ids[i]`` the generated answer, with or without its end id.
        """
        if len(prompt_ids) != len(response_ids):
            raise DataError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses; "
                            "give one response per prompt")
        built = [self.sequence(p, r) for p, r in zip(prompt_ids, response_ids)]
        raw = self.raw_scores([b[0] for b in built], batch_size, [b[1] for b in built])
        return self.normalize(raw) if normalize else raw

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 8, *,
              formatted: bool = False, normalize: bool = True) -> torch.Tensor:
        """(N,) float32 CPU scores, normalised (mean 0 / std 1 on the reference answers).

        ``prompts[i]`` is the raw instruction text (input empty) or an entry dict with
        ``instruction`` and ``input``; it is formatted here with the reward model's prompt
        style (``self.prompt_style``: Alpaca or Phi-3 with the response header). With
        ``formatted=True`` each prompt is instead the full prompt text, used verbatim.
        ``responses[i]`` is the answer text alone.
        """
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses; give one "
                            "response per prompt")
        encode = self.tokenizer.encode_ordinary
        return self.score_ids([self.prompt_ids(p, formatted=formatted) for p in prompts],
                              [encode(r) for r in responses], batch_size, normalize=normalize)


def open_reward_model(path: str | os.PathLike, device: torch.device | str = "cpu",
                      dtype: torch.dtype | str | None = None) -> RewardScorer:
    """Open a saved reward model (its directory or a ``finetune reward`` output folder).

    ``device`` also takes "auto" (CUDA, then MPS, else CPU); the weights stay frozen. An
    ensemble (``finetune reward --ensemble K``) opens as an ``EnsembleScorer`` (same API).
    """
    directory = resolve_classifier_dir(path)
    info = (read_header(directory).get("metadata") or {}).get(REWARD_KEY)
    if isinstance(info, dict) and info.get("ensemble") is not None:
        from scratchllm.finetune.reward_ensemble import open_ensemble  # noqa: PLC0415

        return open_ensemble(directory, info, open_reward_model, device=device, dtype=dtype)
    model, tokenizer, info, directory = load_reward_model(path, device=resolve_device(device))
    if dtype is not None:
        value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        model.to(dtype=value)
    model.requires_grad_(False)
    return RewardScorer(model, tokenizer, info, directory)
