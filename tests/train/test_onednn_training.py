"""Pretraining through oneDNN (``model.cpu_matmul``, what AMD CPUs get) follows the same
losses as through MKL, for both families' layers: GPT-2's own autograd functions (fused
attention projection, feature-major MLP, fused head loss) and Llama's plain ``nn.Linear``s."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from scratchllm.model import cpu_matmul
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer

pytestmark = pytest.mark.skipif(not cpu_matmul._onednn_runs(),
                                reason="this PyTorch build has no oneDNN linear")


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train_loss"] for row in rows if "train_loss" in row]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny"])
def test_onednn_and_mkl_pretrain_the_same_losses(tmp_path, monkeypatch, story_file,
                                                  hf_tokenizer_file, preset):
    calls = {"n": 0}  # nn.Linear layers routed by the trainer's onednn_linears context
    real = cpu_matmul.OneDNNLinear.forward

    def counting(ctx, *args):
        calls["n"] += 1
        return real(ctx, *args)

    monkeypatch.setattr(cpu_matmul.OneDNNLinear, "forward", staticmethod(counting))
    monkeypatch.setattr("scratchllm.train.run_files.plot_losses", lambda *a, **k: None)
    losses = {}
    for library in ("mkl", "onednn"):
        monkeypatch.setenv(cpu_matmul.ENV, library)
        calls["n"] = 0
        config = TrainConfig(preset=preset, data=str(story_file), tokenizer=str(hf_tokenizer_file),
                             context_length=16, max_steps=4, micro_batch_size=2, batch_size=2,
                             lr=1e-3, warmup_steps=1, log_every=1, eval_every=2, eval_batches=1,
                             sample_tokens=0, save_every=0, device="cpu", precision="fp32",
                             seed=5, out_dir=str(tmp_path / library))
        Trainer(config, stream=io.StringIO()).run()
        losses[library] = _losses(tmp_path / library)
        assert (calls["n"] > 0) == (library == "onednn"), (library, calls)
    assert len(losses["mkl"]) >= 3
    assert losses["onednn"] == pytest.approx(losses["mkl"], rel=1e-4)
    assert losses["mkl"][-1] < losses["mkl"][0]  # it trained
