"""A token embedding whose training gradient stays allocated and is reset row by row.

A token-embedding layer (book 2.7) has a dense (vocab, E) gradient, 154 MB for GPT-2, yet a
batch touches only its B*T rows of it. ``nn.Embedding``'s backward allocates the whole
gradient, fills it with zeros and adds the batch's rows; ``zero_grad(set_to_none=True)``
frees it again before the next step. On two CPU cores that fill took ~30 ms of a ~1.9 s
GPT-2 training step (1.6%), writing 154 MB to memory for 512 useful rows.

With ``keep_row_grads`` on, the gradient buffer outlives the step: the forward asks autograd
for a sparse gradient (only the batch's rows), autograd adds it into the dense buffer in place
(``dense += sparse``), and ``reset_grad`` zeroes just the rows the last step touched before
handing the buffer back as ``weight.grad``. The optimizer still sees an ordinary dense
gradient, equal bit for bit to ``nn.Embedding``'s (both add the rows in the same order).

The trainer turns it on only where that is plainly safe: an untied weight (a tied head would
add its dense gradient into the buffer, a full pass), one process (DDP and FSDP hook into
the gradient), eager code (compiled backward passes are dense), the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding`` (same parameters and state dict) that can keep its gradient buffer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_row_grads = False
        self._grad_buffer: torch.Tensor | None = None
        self._touched: list[torch.Tensor] = []  # token ids since the last reset_grad

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy`` for a checkpoint's merged model or a frozen reference)
        starts without the buffer: it is this training run's, and as large as the weight."""
        state = dict(super().__getstate__())
        state.update(keep_row_grads=False, _grad_buffer=None, _touched=[])
        return state

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        grad = self.weight.grad
        if (self.keep_row_grads and grad is not None and grad is self._grad_buffer
                and torch.is_grad_enabled() and self.weight.requires_grad
                and not torch.compiler.is_compiling()):
            self._touched.append(token_ids.detach().reshape(-1))
            return F.embedding(token_ids, self.weight, self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, sparse=True)
        return super().forward(token_ids)

    @torch.no_grad()
    def reset_grad(self) -> None:
        """Make ``weight.grad`` the kept buffer, all zeros: call after the optimizer's
        ``zero_grad``. Only the rows touched since the last call are zeroed."""
        weight, buf = self.weight, self._grad_buffer
        if buf is None or buf.shape != weight.shape or buf.dtype != weight.dtype \
                or buf.device != weight.device:
            buf = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        elif self._touched:
            buf.index_fill_(0, torch.cat(self._touched).to(buf.device), 0.0)
        self._touched.clear()
        self._grad_buffer = buf
        weight.grad = buf


def row_grad_embeddings(model: nn.Module) -> list[TokenEmbedding]:
    """``model``'s token embeddings that may keep their gradient (see the module doc), with
    ``keep_row_grads`` switched on. The caller checks it runs one eager process."""
    shared: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        shared[id(param)] = shared.get(id(param), 0) + 1
    chosen = []
    for module in model.modules():
        if (isinstance(module, TokenEmbedding) and module.weight.requires_grad
                and module.weight.device.type == "cpu" and shared[id(module.weight)] == 1
                and module.max_norm is None and not module.sparse):
            module.keep_row_grads = True
            chosen.append(module)
    return chosen
