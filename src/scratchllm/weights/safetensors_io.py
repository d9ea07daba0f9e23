"""Write a .safetensors file one tensor at a time, so exporting never holds a second model copy.

``safetensors.torch.save_file`` needs every tensor in one dict at once; an export that must
transpose or rename tensors would then hold the model twice. The format is simple enough to
stream: 8 bytes of little-endian header length, a JSON header with each tensor's dtype, shape
and byte range, then the raw bytes in that order (https://github.com/huggingface/safetensors).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.errors import CheckpointError

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
               torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}

# name -> (a cheap view giving dtype/shape, a function producing the contiguous CPU tensor)
TensorSource = tuple[torch.Tensor, Callable[[], torch.Tensor]]


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write_safetensors(path: Path, tensors: dict[str, TensorSource],
                      metadata: dict[str, str] | None = None) -> int:
    """Stream ``tensors`` into ``path`` (fsynced); return the number of tensor bytes."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (view, _) in tensors.items():
        if view.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"tensor {name} has dtype {view.dtype}, which safetensors "
                                  "cannot store; cast the model to float32/bfloat16 first")
        size = tensor_nbytes(view)
        header[name] = {"dtype": DTYPE_NAMES[view.dtype], "shape": list(view.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # pad so the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name, (view, produce) in tensors.items():
            tensor = produce().detach().to("cpu").contiguous()
            if tensor.shape != view.shape or tensor.dtype != view.dtype:
                raise CheckpointError(f"tensor {name} changed shape/dtype while exporting")
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        handle.flush()
        os.fsync(handle.fileno())
    return offset
