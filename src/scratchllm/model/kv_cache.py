"""A key/value cache so each generated token attends over stored keys instead of recomputing them."""

from __future__ import annotations

import torch

from scratchllm.errors import ContextLengthError, DataError


class KVCache:
    """Per-layer key and value tensors of every token processed so far.

    Buffers of ``max_length`` positions are allocated on the first write, so appending a token
    is a copy into place rather than a concatenation that reallocates the whole cache each step.
    ``length`` counts the cached positions; the model advances it once per forward pass, after
    all layers have written their new keys and values.
    """

    def __init__(self, n_layers: int, max_length: int) -> None:
        self.n_layers = n_layers
        self.max_length = max_length
        self.length = 0
        self._keys: list[torch.Tensor | None] = [None] * n_layers
        self._values: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Store new (B, H, T, D) keys/values of ``layer``; return all cached ones, new included."""
        start, end = self.length, self.length + keys.shape[2]
        if end > self.max_length:
            raise ContextLengthError(
                f"the KV cache holds {self.max_length} positions but {end} were requested; "
                "reset the cache or crop the input to the context length"
            )
        k_buf = self._keys[layer]
        if k_buf is None or not self._fits(k_buf, keys):
            if start > 0:
                raise DataError(
                    f"new keys of shape {tuple(keys.shape)} ({keys.dtype}, {keys.device}) do "
                    f"not match the {start} cached positions; call reset() before starting a "
                    "new batch"
                )
            # First write, or a reset cache reused with another batch size, dtype or device.
            batch, heads, _, dim = keys.shape
            shape = (batch, heads, self.max_length, dim)
            self._keys[layer] = keys.new_empty(shape)
            self._values[layer] = values.new_empty(shape)
        k_buf, v_buf = self._keys[layer], self._values[layer]
        # narrow + copy_: the same writes and views as slice indexing, with less per-call
        # overhead (it runs twice per layer per decoded token)
        k_buf.narrow(2, start, end - start).copy_(keys)
        v_buf.narrow(2, start, end - start).copy_(values)
        return k_buf.narrow(2, 0, end), v_buf.narrow(2, 0, end)

    @staticmethod
    def _fits(buffer: torch.Tensor, new: torch.Tensor) -> bool:
        same_shape = (buffer.shape[0], buffer.shape[1], buffer.shape[3]) == (
            new.shape[0], new.shape[1], new.shape[3])
        return same_shape and buffer.dtype == new.dtype and buffer.device == new.device

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows ``index`` (ascending), e.g. when other rows finished.

        The kept rows move to the front of the same buffers, which then stay in use (a
        view of their first rows): no new memory to allocate and first touch."""
        length, count = self.length, len(index)
        for store in (self._keys, self._values):
            for layer, buf in enumerate(store):
                if buf is None:
                    continue
                # the indexed read is a copy, so writing it over the front rows is safe
                buf[:count].narrow(2, 0, length).copy_(buf.narrow(2, 0, length)[index])
                store[layer] = buf[:count]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens

    def reset(self) -> None:
        """Forget every cached position (buffers are kept for reuse)."""
        self.length = 0
