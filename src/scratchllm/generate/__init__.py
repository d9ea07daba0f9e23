"""Text generation: greedy and sampled decoding with a KV cache, batching and streaming.

* ``generate(model, ids, max_new_tokens, ...)``: the prompt plus new tokens (book 4.7, 5.3).
* ``generate_batch(model, prompts, max_new_tokens, ...)``: new tokens for each of several
  prompts of different lengths, decoded together with left padding.
* ``stream(model, ids, max_new_tokens, ..., tokenizer=None)``: new token ids (or text
  pieces) one at a time, as they are produced.
* ``DecodeStats``: time to first token and tokens/s of a ``stream(..., stats=...)``.
* ``cut_at_stop_strings(pieces, stops)``: streamed text up to, not including, a stop string.
* ``sampling``: the temperature, top-k, top-p and min-p filters on their own (book 5.3).
"""

from scratchllm.generate.api import generate, generate_batch, stream
from scratchllm.generate.stats import DecodeStats
from scratchllm.generate.stopping import cut_at_stop_strings
from scratchllm.generate.sampling import (
    apply_temperature,
    check_sampling_args,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "DecodeStats",
    "apply_temperature",
    "check_sampling_args",
    "cut_at_stop_strings",
    "generate",
    "generate_batch",
    "min_p_filter",
    "sample_next_token",
    "stream",
    "top_k_filter",
    "top_p_filter",
]
