"""Damaged or mismatched Hugging Face directories fail with a CheckpointError naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from scratchllm.errors import CheckpointError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.hf import load_hf_dir
from scratchllm.weights.hf_export import export_hf_dir


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    config = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2,
                       qkv_bias=True)
    return export_hf_dir(GPTModel(config), tmp_path / "hf")


def rewrite(hf_dir: Path, change) -> None:
    path = hf_dir / "model.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    change(tensors)
    safetensors.torch.save_file(tensors, str(path))


def test_unknown_model_type_lists_supported(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match=r"'mamba' is not supported.*gpt2"):
        load_hf_dir(hf_dir)


def test_missing_tensor_is_named(hf_dir):
    rewrite(hf_dir, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"trf_blocks\.1\.ff\.fc1\.bias"):
        load_hf_dir(hf_dir)


def test_unexpected_tensor_is_named(hf_dir):
    rewrite(hf_dir, lambda t: t.update({"transformer.h.2.ln_1.weight": torch.ones(16)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor transformer\.h\.2\.ln_1"):
        load_hf_dir(hf_dir)


def test_ignorable_attention_buffers_are_skipped(hf_dir):
    rewrite(hf_dir, lambda t: t.update({"transformer.h.0.attn.bias": torch.ones(1, 1, 16, 16)}))
    model, _ = load_hf_dir(hf_dir)
    assert model.config.n_layers == 2


def test_shape_mismatch_is_named(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "n_positions": 32}))
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight has shape \(16, 16\)"):
        load_hf_dir(hf_dir)


def test_unsupported_dtype_is_refused(hf_dir):
    rewrite(hf_dir, lambda t: t.update({"transformer.ln_f.bias": torch.zeros(16, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=r"ln_f\.bias has dtype I32"):
        load_hf_dir(hf_dir)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.001])
def test_truncated_file_is_reported_with_its_name(hf_dir, keep):
    path = hf_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_dir(hf_dir)


def test_missing_shard_and_pickle_only_dirs(tmp_path):
    model = GPTModel(GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2,
                               n_layers=2))
    sharded = export_hf_dir(model, tmp_path / "s", shard_size=4000)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[1].unlink()
    with pytest.raises(MissingFileError, match=shards[1].name):
        load_hf_dir(sharded)
    pickle_dir = tmp_path / "p"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_hf_dir(pickle_dir)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_hf_dir(tmp_path / "nowhere")


def test_config_with_more_layers_than_the_weights_is_refused_before_building(hf_dir):
    import time

    config = json.loads((hf_dir / "config.json").read_text())
    config["n_layer"] = 1_000_000  # building a million blocks would take minutes
    (hf_dir / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="says 1000000 layers but the weight files hold 2"):
        load_hf_dir(hf_dir)
    assert time.perf_counter() - start < 5
