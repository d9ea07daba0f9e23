"""Copy weights between the teaching attention modules and the fused production one.

``scratchllm.model.attention.MultiHeadAttention`` keeps queries, keys and values in one
``qkv`` linear layer: weight rows [0, E) are the query projection, [E, 2E) the keys and
[2E, 3E) the values, each laid out head after head. Copying weights across shows the two
designs compute the same function (book 3.6.2 vs the fused version).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.teaching.attention import (
    MultiHeadAttentionWrapper,
    WeightSplitMultiHeadAttention,
)

TeachingMHA = WeightSplitMultiHeadAttention | MultiHeadAttentionWrapper


def _projections(module: TeachingMHA) -> tuple[list[nn.Linear], list[nn.Linear], list[nn.Linear]]:
    """The query, key and value layers, one per head for the wrapper, one in all otherwise."""
    if isinstance(module, WeightSplitMultiHeadAttention):
        return [module.W_query], [module.W_key], [module.W_value]
    if isinstance(module, MultiHeadAttentionWrapper):
        return ([h.W_query for h in module.heads], [h.W_key for h in module.heads],
                [h.W_value for h in module.heads])
    raise ConfigError(
        f"cannot convert {type(module).__name__}; pass a WeightSplitMultiHeadAttention or a "
        "MultiHeadAttentionWrapper"
    )


def _n_heads(module: TeachingMHA) -> int:
    if isinstance(module, WeightSplitMultiHeadAttention):
        return module.num_heads
    return len(module.heads)


def _check_shapes(teaching: TeachingMHA, fused: MultiHeadAttention) -> None:
    queries, _, _ = _projections(teaching)
    d_in = queries[0].in_features
    d_out = sum(layer.out_features for layer in queries)
    emb_dim = fused.qkv.in_features
    if (d_in, d_out, _n_heads(teaching)) != (emb_dim, emb_dim, fused.n_heads):
        raise ConfigError(
            f"shapes differ: teaching module has d_in={d_in}, total d_out={d_out}, "
            f"heads={_n_heads(teaching)} but the fused module has emb_dim={emb_dim}, "
            f"n_heads={fused.n_heads}; build both with the same sizes"
        )
    has_bias = queries[0].bias is not None
    if has_bias and fused.qkv.bias is None:
        raise ConfigError(
            "the teaching module has query/key/value biases but the fused module does not; "
            "build the fused MultiHeadAttention with qkv_bias=True"
        )


@torch.no_grad()
def load_teaching_into_fused(teaching: TeachingMHA, fused: MultiHeadAttention) -> MultiHeadAttention:
    """Overwrite ``fused``'s weights so it computes exactly what ``teaching`` computes.

    The wrapper has no output projection, so the fused ``out_proj`` becomes the identity.
    Returns ``fused`` for chaining.
    """
    _check_shapes(teaching, fused)
    groups = _projections(teaching)
    weight = torch.cat([layer.weight for group in groups for layer in group], dim=0)
    fused.qkv.weight.copy_(weight)
    if fused.qkv.bias is not None:
        if groups[0][0].bias is None:
            fused.qkv.bias.zero_()
        else:
            fused.qkv.bias.copy_(torch.cat([layer.bias for group in groups for layer in group]))
    if isinstance(teaching, WeightSplitMultiHeadAttention):
        fused.out_proj.load_state_dict(teaching.out_proj.state_dict())
    else:
        fused.out_proj.weight.copy_(torch.eye(fused.out_proj.out_features))
        fused.out_proj.bias.zero_()
    return fused


@torch.no_grad()
def load_fused_into_teaching(fused: MultiHeadAttention, teaching: TeachingMHA) -> TeachingMHA:
    """Overwrite ``teaching``'s weights with ``fused``'s (the inverse of the function above).

    A wrapper can only receive a fused module whose ``out_proj`` is the identity, since the
    wrapper has nowhere to put an output projection. Returns ``teaching``.
    """
    _check_shapes(teaching, fused)
    if isinstance(teaching, MultiHeadAttentionWrapper):
        eye = torch.eye(fused.out_proj.out_features, device=fused.out_proj.weight.device)
        if not (torch.equal(fused.out_proj.weight, eye.to(fused.out_proj.weight.dtype))
                and not fused.out_proj.bias.any()):
            raise ConfigError(
                "MultiHeadAttentionWrapper has no output projection, so it can only take "
                "weights from a fused module whose out_proj is the identity; use "
                "WeightSplitMultiHeadAttention instead"
            )
    groups = _projections(teaching)
    layers = [layer for group in groups for layer in group]
    sizes = [layer.out_features for layer in layers]
    for layer, w in zip(layers, fused.qkv.weight.split(sizes, dim=0)):
        layer.weight.copy_(w)
    if layers[0].bias is not None:
        for layer, b in zip(layers, fused.qkv.bias.split(sizes)):
            layer.bias.copy_(b)
    elif fused.qkv.bias is not None and fused.qkv.bias.any():
        raise ConfigError(
            "the fused module has non-zero query/key/value biases but the teaching module has "
            "none; build the teaching module with qkv_bias=True"
        )
    if isinstance(teaching, WeightSplitMultiHeadAttention):
        teaching.out_proj.load_state_dict(fused.out_proj.state_dict())
    return teaching
