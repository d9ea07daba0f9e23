"""Checkpoints and --resume: an interrupted fine-tuning run continues bitwise equal on the CPU.

Every run uses dropout, warmup + cosine, clipping and accumulation, so the weights, AdamW
moments, schedule position, RNG states and data position all have to come back exactly.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import safetensors.torch
import torch

from scratchllm.cli.main import main
from scratchllm.errors import ConfigError
from scratchllm.finetune import classify as classify_module
from scratchllm.finetune.classifier_model import load_classifier
from scratchllm.finetune.classify import finetune_classifier
from scratchllm.finetune.dpo import finetune_dpo
from scratchllm.finetune.instruct import InstructTask, finetune_instruct

LOOP = dict(batch_size=4, micro_batch_size=2, warmup_steps=2, min_lr=1e-5, grad_clip=1.0,
            device="cpu", progress=False)


def weights(directory):
    return safetensors.torch.load_file(str(directory / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different


def train_losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["event"] == "train"]


def test_instruct_resume_is_bitwise_equal(dropout_model_dir, instruct_file, tmp_path):
    """17 examples, batch 4: 4 steps per epoch, 8 in all; stop after 3, resume to 8."""
    common = dict(epochs=2, lr=1e-3, eval_every=3, eval_batches=1, generate_test=False, **LOOP)
    straight = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "a", **common)
    assert straight.steps == 8 and not straight.interrupted
    stopped = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", stop_at=3,
                                **common)
    assert stopped.interrupted and stopped.steps == 3
    assert (tmp_path / "b" / "checkpoints" / "step-00000003").is_dir()
    resumed = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", resume=True,
                                **common)
    assert resumed.steps == 8 and not resumed.interrupted
    assert_same_weights(tmp_path / "a" / "latest", tmp_path / "b" / "latest")
    assert_same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")  # no step logged twice
    assert resumed.val_loss == straight.val_loss
    # the run really trained and the schedule really moved (else equality would be trivial)
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text()
                                .splitlines()) if r["event"] == "train"]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] < 1e-3


def test_classify_resume_with_keep_best_is_bitwise_equal(dropout_model_dir, toy_labels_file,
                                                         tmp_path):
    """28 training texts, batch 4: 7 steps per epoch, 14 in all; stop after 5, resume."""
    common = dict(epochs=2, lr=2e-3, trainable="all", keep_best=True, eval_every=4, **LOOP)
    straight = finetune_classifier(dropout_model_dir, toy_labels_file, tmp_path / "a", **common)
    stopped = finetune_classifier(dropout_model_dir, toy_labels_file, tmp_path / "b",
                                  stop_at=5, **common)
    assert stopped.interrupted and stopped.steps == 5 and not stopped.metrics
    resumed = finetune_classifier(dropout_model_dir, toy_labels_file, tmp_path / "b",
                                  resume=True, **common)
    assert resumed.steps == straight.steps == 14
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
    assert_same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")
    assert resumed.metrics == straight.metrics
    assert resumed.settings.get("best_epoch") == straight.settings.get("best_epoch")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


def test_dpo_with_lora_resume_is_bitwise_equal(dropout_model_dir, preference_file, tmp_path):
    common = dict(epochs=1, lr=5e-3, beta=0.5, eval_every=2, eval_batches=1,
                  lora={"rank": 2, "alpha": 4.0, "dropout": 0.1}, **LOOP)
    finetune_dpo(dropout_model_dir, preference_file, tmp_path / "a", **common)
    finetune_dpo(dropout_model_dir, preference_file, tmp_path / "b", stop_at=2, **common)
    finetune_dpo(dropout_model_dir, preference_file, tmp_path / "b", resume=True, **common)
    assert_same_weights(tmp_path / "a" / "latest", tmp_path / "b" / "latest")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    base = weights(dropout_model_dir)
    tuned = weights(tmp_path / "a" / "latest")
    assert not torch.equal(base["trf_blocks.0.att.qkv.weight"], tuned["trf_blocks.0.att.qkv.weight"])


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(dropout_model_dir, instruct_file,
                                                       tmp_path, monkeypatch):
    """A real SIGINT mid-run: the step finishes, a checkpoint is saved, --resume completes."""
    common = dict(epochs=1, lr=1e-3, eval_every=10, eval_batches=1, generate_test=False, **LOOP)
    original = InstructTask.loss_sum
    calls = []

    def interrupting(self, batch):
        calls.append(1)
        if len(calls) == 3:  # during step 2 (two micro batches per step)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(InstructTask, "loss_sum", interrupting)
    stopped = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", **common)
    assert stopped.interrupted and stopped.steps == 2
    monkeypatch.setattr(InstructTask, "loss_sum", original)
    straight = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "straight", **common)
    finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", resume=True, **common)
    assert_same_weights(tmp_path / "run" / "latest", tmp_path / "straight" / "latest")
    assert straight.steps == 4


def test_resume_refuses_other_settings_and_missing_checkpoints(dropout_model_dir, instruct_file,
                                                               tmp_path):
    common = dict(epochs=1, eval_every=10, eval_batches=1, generate_test=False, **LOOP)
    finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", stop_at=1, **common)
    with pytest.raises(ConfigError, match=r"lr: saved 5e-05, now 0\.001"):
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", resume=True,
                          **{**common, "lr": 1e-3})
    finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "done", **common)
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "done", resume=True,
                          **common)
    with pytest.raises(ConfigError, match="--resume to continue it"):  # a checkpoint is there
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", **common)
    with pytest.raises(ConfigError) as refused:  # none: --resume would only be refused next
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "done", **common)
    assert "--overwrite" in str(refused.value) and "--resume" not in str(refused.value)


def test_cli_flags_save_every_and_resume(dropout_model_dir, toy_labels_file, instruct_file,
                                         tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["finetune", "classify", "--model", str(dropout_model_dir), "--data",
            str(toy_labels_file), "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--micro-batch-size", "2", "--warmup-steps", "2", "--min-lr", "1e-5",
            "--grad-clip", "0.5", "--save-every", "3", "--keep-last", "1", "--device", "cpu"]
    assert main(args + ["--resume"]) == 0  # a new folder (a mistyped --out): said, not silent
    assert f"no checkpoint in {out} yet; starting a new run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000006"]
    assert (out / "best" / "config.json").is_file()
    _, _, info = load_classifier(out / "latest")  # the final classifier, not a training state
    assert info["labels"] == ["neg", "pos"]
    assert main(args + ["--resume"]) == 0  # continues step 6 to the end (step 7)
    assert "resumed from" in capsys.readouterr().err
    code = main(["finetune", "instruct", "--model", str(dropout_model_dir), "--data",
                 str(instruct_file), "--out", str(out), "--resume", "--device", "cpu"])
    assert code == 2 and "method: saved 'classify', now 'instruct'" in capsys.readouterr().err
    assert classify_module.RESULTS_FILE in {p.name for p in out.iterdir()}


def test_sigterm_saves_and_the_command_exits_143(dropout_model_dir, toy_labels_file, tmp_path,
                                                  monkeypatch, capsys):
    """Job schedulers send SIGTERM before killing: it checkpoints like Ctrl-C (exit 128 + 15)."""
    from scratchllm.finetune.classify_task import ClassifyTask

    original = ClassifyTask.loss_sum
    calls = []

    def terminating(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(ClassifyTask, "loss_sum", terminating)
    args = ["finetune", "classify", "--model", str(dropout_model_dir), "--data",
            str(toy_labels_file), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "4", "--device", "cpu"]
    assert main(args) == 143
    captured = capsys.readouterr()
    assert "stopped by SIGTERM at step 2" in captured.err and "--resume" not in captured.out
    monkeypatch.setattr(ClassifyTask, "loss_sum", original)
    assert main(args + ["--resume"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 7
