"""What every model family does with its inputs before the first layer: check them, place them.

GPT-2 and Llama differ in how they use positions (learned embeddings vs. rotations) but agree
on everything here: which token ids are valid, how many fit in the context window, where each
token sits when a batch is left-padded, and which keys each query may attend to.
"""

from __future__ import annotations

import torch

from scratchllm.errors import ContextLengthError, DataError
from scratchllm.model.attention import build_attention_mask
from scratchllm.model.kv_cache import KVCache


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s inputs must go: its first parameter's device (the CPU for a model
    without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def check_token_ids(token_ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse malformed ids here, instead of an IndexError (or, on CUDA, a device-side assert
    that kills the process) deep inside the embedding lookup."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 2:
        shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else None
        raise DataError(
            f"token_ids must be a 2-D (batch, tokens) integer tensor, got "
            f"{type(token_ids).__name__} of shape {shape}; add a batch dimension with "
            "ids.unsqueeze(0)"
        )
    if token_ids.dtype.is_floating_point or token_ids.dtype.is_complex or \
            token_ids.dtype == torch.bool:
        raise DataError(f"token_ids must hold integers, got {token_ids.dtype}; convert with .long()")
    if token_ids.numel() == 0:
        raise DataError("token_ids is empty; pass at least one token per row")
    # The value check reads the ids back to the host: free on the CPU, a pipeline stall on an
    # accelerator and a graph break under torch.compile, so it runs on CPU tensors only.
    if token_ids.device.type != "cpu" or torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(token_ids)
    if int(low) < 0 or int(high) >= vocab_size:
        raise DataError(
            f"token ids must be in [0, {vocab_size}), got values from {int(low)} to "
            f"{int(high)}; was the text encoded with this model's tokenizer?"
        )


def positions_and_mask(token_ids: torch.Tensor, *, vocab_size: int, context_length: int,
                       cache: KVCache | None, attention_mask: torch.Tensor | None,
                       position_ids: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a forward call's inputs; return (position ids, boolean attention mask or None).

    With a left-padded ``attention_mask`` (B, cached+new; 1 real, 0 padding) positions are
    counted over real tokens only, so a padded prompt sees the positions it would see alone.
    A mask of ``None`` means plain causal attention, the fast path. A 4-D ``attention_mask``
    (B or 1, 1, new, cached+new: bool, or additive in the activations' dtype) is a mask a
    decode loop prepared once per batch; it is used as it is, with ``position_ids``.
    """
    check_token_ids(token_ids, vocab_size)
    batch, n_tokens = token_ids.shape
    past = cache.length if cache is not None else 0
    if past + n_tokens > context_length:
        raise ContextLengthError(
            f"{past + n_tokens} tokens exceed the model's context length of {context_length}; "
            f"keep the last {context_length} tokens of the input"
        )
    if attention_mask is not None and attention_mask.dim() == 4:
        return _prepared(attention_mask, position_ids, batch, n_tokens, past)
    mask = None
    if attention_mask is not None:
        if attention_mask.shape != (batch, past + n_tokens):
            raise DataError(
                f"attention_mask must have shape (batch, cached + new tokens) = "
                f"({batch}, {past + n_tokens}), got {tuple(attention_mask.shape)}"
            )
        if not bool(attention_mask.all()):
            mask = build_attention_mask(n_tokens, past, padding_mask=attention_mask)
    if position_ids is None:
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        else:
            position_ids = torch.arange(past, past + n_tokens, device=token_ids.device)
    return position_ids, mask


def _prepared(mask: torch.Tensor, position_ids: torch.Tensor | None, batch: int,
              n_tokens: int, past: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a decode loop's prepared 4-D mask (built once per batch instead of every step)."""
    if position_ids is None:
        raise DataError("a 4-D attention_mask (prepared by a decode loop) needs position_ids; "
                        "pass a (batch, cached + new) 1/0 mask to have positions counted")
    if mask.shape[0] not in (1, batch) or tuple(mask.shape[1:]) != (1, n_tokens,
                                                                    past + n_tokens):
        raise DataError(
            f"a 4-D attention_mask must have shape (batch or 1, 1, new tokens, cached + new) "
            f"= ({batch}, 1, {n_tokens}, {past + n_tokens}), got {tuple(mask.shape)}"
        )
    return position_ids, mask
