"""Rotary position embeddings (RoPE), with Llama 3's frequency scaling (book bonus: GPT -> Llama).

GPT adds a learned vector per position to each token embedding. RoPE instead rotates every
query and key by an angle proportional to its position, so the dot product of a query at
position m and a key at position n depends only on m - n (Su et al. 2021).

Convention: "rotate half". A head vector of size D is split into halves x1 = x[:D/2] and
x2 = x[D/2:]; pair i is (x1[i], x2[i]) and rotates with frequency inv_freq[i]:

    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = cat(-x2, x1)

This is the layout of Hugging Face's Llama/Qwen3 code and of the book's Llama chapters, so
their published q_proj/k_proj weights load unpermuted. (Meta's original checkpoints pair
*adjacent* features instead; Hugging Face's conversion script permutes those weights once.)
"""

from __future__ import annotations

import math

import torch

from scratchllm.errors import ConfigError


def rope_inverse_frequencies(head_dim: int, base: float,
                             device: torch.device | None = None) -> torch.Tensor:
    """theta_i = base^(-2i/D) for i in [0, D/2): one rotation speed per feature pair."""
    if head_dim % 2 != 0:
        raise ConfigError(f"RoPE needs an even head_dim, got {head_dim}; use an even head size")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (base ** exponents)


def scale_llama3_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                             high_freq_factor: float,
                             original_context_length: int) -> torch.Tensor:
    """Llama 3.1's context extension: slow down only the low frequencies.

    Wavelengths (2*pi/theta) shorter than original_context_length/high_freq_factor encode
    local order and stay as they are; those longer than original_context_length/low_freq_factor
    are divided by ``factor`` (positional interpolation); in between, the two are blended
    linearly in original_context_length/wavelength.
    """
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_context_length / low_freq_factor
    high_freq_wavelength = original_context_length / high_freq_factor
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = (original_context_length / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return torch.where(is_medium, blended, scaled)


def compute_rope_frequencies(head_dim: int, base: float, context_length: int,
                             scaling: object | None = None,
                             device: torch.device | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (context_length, head_dim), in float32.

    ``scaling`` is None or anything with the attributes (or keys) factor, low_freq_factor,
    high_freq_factor and original_context_length (``LlamaConfig.rope_scaling``). Row p holds
    the angles p*theta_i, repeated for both halves of the head (rotate-half layout).
    """
    inv_freq = rope_inverse_frequencies(head_dim, base, device)
    if scaling is not None:
        get = scaling.get if isinstance(scaling, dict) else lambda key: getattr(scaling, key)
        inv_freq = scale_llama3_frequencies(
            inv_freq, get("factor"), get("low_freq_factor"), get("high_freq_factor"),
            get("original_context_length"))
    positions = torch.arange(context_length, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)  # (context_length, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (context_length, D)
    return torch.cos(angles), torch.sin(angles)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1): the 90-degree turn of every feature pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate queries or keys ``x`` (B, H, T, D) to their positions.

    With ``position_ids`` ((T,) or (B, T)), ``cos``/``sin`` are the full tables from
    ``compute_rope_frequencies`` and are indexed per token, so left-padded rows and cached
    decoding get each token's true position. Without, they are already gathered:
    (T, D) or (B, T, D). The tables are cast to ``x``'s dtype, as Hugging Face does.
    """
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    if cos.dim() == 3:  # (B, T, D) -> (B, 1, T, D), shared by all heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
