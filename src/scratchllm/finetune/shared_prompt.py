"""DPO's forward pass with each pair's prompt run once instead of twice.

A preference pair's chosen and rejected answers follow the same prompt, and on the book's
ch. 7 data the prompt is most of the sequence (44 of 61 tokens on average), yet a stacked
(2B, T) batch runs it through the transformer twice. Here the B prompts run once, keeping
their keys and values, and the 2B answers run after them in one pass that attends to those
keys and values (repeated for the two answers; gradients from both flow back into the one
prompt pass). Causal attention makes this exact: a prompt position never sees an answer.
On the book's data it cuts the positions the transformer body runs to ~3/4 of the padded
stacked batch.

It is off by default (``pair_logprobs(share_prompt=False)``): measured on a 2-core CPU at the
GPT-2 124M shape, a DPO forward + backward took ~1.5-1.7x *longer* this way (batch 4 and 8
pairs), the forward alone ~1.2-1.5x. Each pass reads every weight matrix, and at a few
hundred positions a matmul is bound by those reads, not by the positions (a 424-row
``addmm`` of the MLP took 93 ms where a 1,040-row one took 153 ms), so two passes over ~70%
of the positions cost more than one over all of them; in the backward pass every weight
gradient is also formed and accumulated twice. A single pass would need each pair packed
into one row with a per-row attention mask. This can pay where positions dominate (large
batches, accelerators): ``benchmarks/dpo_throughput.py --contenders book,ours,shared``
measures it.

The answers of a pass start in the same column, so each row's prompt padding sits between
its prompt and its answer: an attention mask hides it and explicit position ids continue
each answer from its own prompt's length (both are ordinary ``forward`` arguments of the GPT
and Llama models). The keys and values are kept by ``_ConcatCache``, a cache that
concatenates instead of writing into preallocated buffers: in-place writes would overwrite
tensors that autograd saved for the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.data.instruction import IGNORE_INDEX


class _ConcatCache:
    """The KV cache protocol of ``model.attention.cached_attention`` (``length``, ``update``,
    ``advance``), out of place so autograd can differentiate through it."""

    def __init__(self, keys: dict | None = None, values: dict | None = None,
                 length: int = 0) -> None:
        self.keys, self.values, self.length = dict(keys or {}), dict(values or {}), length

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        if layer in self.keys:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens

    def repeated(self, times: int) -> "_ConcatCache":
        """The same keys and values, the batch repeated ``times`` over (rows i, B+i, ...)."""
        return _ConcatCache({k: v.repeat(times, 1, 1, 1) for k, v in self.keys.items()},
                            {k: v.repeat(times, 1, 1, 1) for k, v in self.values.items()},
                            self.length)


def shared_prompt_hidden(model: nn.Module, batch: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Final hidden states (2B, K, E) at the scored positions of the stacked (chosen; rejected)
    batch and their targets (2B, K) (``IGNORE_INDEX`` where a row has fewer than K), or None
    when the batch does not have the layout this needs: every row scores one contiguous run
    of tokens right after a prompt that its partner shares, within the context window."""
    inputs = torch.cat([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])
    pairs, width = batch["chosen_inputs"].shape
    scored = targets != IGNORE_INDEX
    count = scored.sum(dim=1)
    if not bool((count > 0).all()):
        return None
    columns = torch.arange(width, device=inputs.device)
    first = torch.where(scored, columns, width).min(dim=1).values
    last = torch.where(scored, columns, -1).max(dim=1).values
    contiguous = bool((last - first + 1 == count).all())
    if not contiguous or not bool((first[:pairs] == first[pairs:]).all()):
        return None
    prompt_len = first[:pairs] + 1   # the last prompt token predicts the first answer token
    prompt_width = int(prompt_len.max())
    in_prompt = columns[:prompt_width] < prompt_len[:, None]
    prompts = batch["chosen_inputs"][:, :prompt_width]
    if not torch.equal(prompts[in_prompt], batch["rejected_inputs"][:, :prompt_width][in_prompt]):
        return None
    answer_width = int(count.max()) - 1  # answer tokens fed in; the first comes from the prompt
    context = getattr(getattr(model, "config", None), "context_length", None)
    if context is not None and prompt_width + answer_width > context:
        return None

    # Columns past a row's prompt hold its chosen answer's first tokens: causal attention
    # keeps them from the prompt positions, and the mask below hides them from the answers.
    cache = _ConcatCache()
    prompt_hidden = model(prompts, cache=cache, return_hidden=True)
    rows = torch.arange(pairs, device=inputs.device)
    first_hidden = prompt_hidden[rows, prompt_len - 1].repeat(2, 1)[:, None]  # (2B, 1, E)
    offsets = torch.arange(answer_width + 1, device=inputs.device)
    target_cols = (first[:, None] + offsets).clamp(max=width - 1)
    answer_targets = torch.where(offsets < count[:, None], targets.gather(1, target_cols),
                                 IGNORE_INDEX)
    if answer_width == 0:
        return first_hidden, answer_targets
    fed = offsets[:answer_width] < (count - 1)[:, None]
    answers = torch.where(fed, inputs.gather(1, target_cols[:, 1:]), 0)
    attention = torch.cat([in_prompt.repeat(2, 1), fed], dim=1).long()
    positions = torch.where(fed, first[:, None] + 1 + offsets[:answer_width], 0)
    answer_hidden = model(answers, cache=cache.repeated(2), attention_mask=attention,
                          position_ids=positions, return_hidden=True)
    return torch.cat([first_hidden, answer_hidden], dim=1), answer_targets
