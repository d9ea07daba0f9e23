"""An interrupted LoRA run: OUT/latest is a plain (merged) model that open_model and
``scratchllm generate`` read, while the checkpoint keeps LoRA's layout for --resume."""

from __future__ import annotations

import torch

from scratchllm.cli.main import main
from scratchllm.finetune.dpo import finetune_dpo
from scratchllm.model.lora import apply_lora, lora_layers
from scratchllm.train.state import latest_checkpoint
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import load_weights_into

LORA = {"rank": 2, "alpha": 4.0}


def test_interrupted_lora_run_leaves_a_loadable_merged_latest(dropout_model_dir,
                                                              preference_file, tmp_path,
                                                              capsys):
    out = tmp_path / "run"
    result = finetune_dpo(dropout_model_dir, preference_file, out, lr=5e-2, beta=0.5,
                          batch_size=4, eval_every=100, eval_batches=1, lora=LORA,
                          device="cpu", progress=False, stop_at=2)
    assert result.interrupted

    loaded = open_model(out, device="cpu")  # the run folder resolves to OUT/latest
    assert not lora_layers(loaded.model)

    # The checkpoint holds LoRA's layout; a LoRA model built from it computes what latest/ does.
    adapted = open_model(dropout_model_dir, device="cpu").model
    apply_lora(adapted, **LORA)
    load_weights_into(adapted, latest_checkpoint(out))
    assert any(layer.lora_B.abs().sum() > 0 for layer in lora_layers(adapted).values())
    ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        expected = adapted.eval()(ids)
        got = loaded.model.eval()(ids)
        base = open_model(dropout_model_dir, device="cpu").model.eval()(ids)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-3)  # the tuned weights, not the base's

    capsys.readouterr()
    code = main(["generate", "--model", str(out), "Hello", "--max-new-tokens", "3",
                 "--device", "cpu"])
    assert code == 0 and capsys.readouterr().out.strip()
