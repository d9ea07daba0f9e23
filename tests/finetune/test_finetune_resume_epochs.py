"""``--resume`` with a new ``--epochs``: a finished (or stopped) run extended to more epochs
equals a run started with that many, as ``pretrain --resume`` takes a new ``--max-steps``.

The epoch order is a function of (seed, epoch) and a constant learning rate does not depend
on the run's length, so the extension is exact: same train losses, same weights. What cannot
be exact is refused with one line: fewer epochs than the checkpoint has done, and a new length
under a decaying (cosine, ``--min-lr``) schedule, which was planned for the old length.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from scratchllm.errors import ConfigError
from scratchllm.finetune.classify import finetune_classifier
from scratchllm.finetune.dpo import finetune_dpo
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.finetune.reward import finetune_reward
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.model_dir import save_model_dir

from reward_support import write_thanks_pairs

# dropout on, accumulation, clipping and a warmup: all of it must come back exactly
LOOP = dict(batch_size=4, micro_batch_size=2, warmup_steps=2, grad_clip=1.0, device="cpu",
            progress=False)


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["event"] == "train"]


def _same_weights(a, b) -> None:
    wa = safetensors.torch.load_file(str(a / "model.safetensors"))
    wb = safetensors.torch.load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def test_instruct_one_epoch_resumed_with_two_equals_two_from_the_start(
        dropout_model_dir, instruct_file, tmp_path):
    """17 examples, batch 4: 4 steps an epoch. eval_every 3 evaluates steps 1, 4, 7, 8 in the
    two-epoch run, and 1, 4 (its last) in the one-epoch run: best/ can match too."""
    common = dict(lr=1e-3, eval_every=3, eval_batches=1, generate_test=False, save_every=4,
                  **LOOP)
    straight = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "a", epochs=2,
                                 **common)
    first = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", epochs=1,
                              **common)
    assert first.steps == 4 and not first.interrupted
    more = finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", epochs=2,
                             resume=True, **common)
    assert more.steps == straight.steps == 8 and not more.interrupted
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a") and len(_losses(tmp_path / "a")) == 8
    _same_weights(tmp_path / "a" / "latest", tmp_path / "b" / "latest")
    _same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")
    assert more.val_loss == straight.val_loss

    # fewer epochs than the checkpoint (step 8) has done: one line saying what would do
    with pytest.raises(ConfigError) as fewer:
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", epochs=1,
                          resume=True, **common)
    message = str(fewer.value)
    assert "step 8" in message and "--epochs 2 or more" in message and "\n" not in message
    # other settings are still refused as before
    with pytest.raises(ConfigError, match=r"lr: saved 0\.001, now 0\.002"):
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "b", epochs=3,
                          resume=True, **{**common, "lr": 2e-3})


def test_a_decaying_schedule_refuses_a_new_length(dropout_model_dir, instruct_file, tmp_path):
    """A cosine to --min-lr was planned over the old step count: continuing it over another
    count would not be the run either length gives, so the resume says so."""
    common = dict(lr=1e-3, min_lr=1e-5, eval_every=10, eval_batches=1, generate_test=False,
                  save_every=4, **LOOP)
    finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", epochs=1, **common)
    with pytest.raises(ConfigError) as refused:
        finetune_instruct(dropout_model_dir, instruct_file, tmp_path / "run", epochs=2,
                          resume=True, **common)
    message = str(refused.value)
    assert "--min-lr" in message and "--epochs 1" in message and "\n" not in message


@pytest.fixture(scope="module")
def tiny_gpt_dir(tmp_path_factory, gpt2_tok):
    torch.manual_seed(1)
    model = GPTModel(GPTConfig.preset("tiny", n_layers=1, emb_dim=32, context_length=64))
    return save_model_dir(tmp_path_factory.mktemp("gpt") / "base", model, gpt2_tok)


def _classify(model, data, out, epochs, **extra):
    # 28 training texts, batch 4: 7 steps an epoch
    return finetune_classifier(model, data, out, epochs=epochs, lr=2e-3, trainable="all",
                               eval_every=4, save_every=7, **LOOP, **extra)


def _dpo(model, data, out, epochs, **extra):
    return finetune_dpo(model, data, out, epochs=epochs, lr=5e-3, beta=0.5, eval_every=2,
                        eval_batches=1, save_every=4, **LOOP, **extra)


def _reward(model, data, out, epochs, **extra):
    return finetune_reward(model, data, out, epochs=epochs, lr=2e-3, eval_every=4,
                           save_every=2, **{**LOOP, "batch_size": 16, "micro_batch_size": 8},
                           **extra)


@pytest.mark.parametrize("kind", ["classify", "dpo", "reward"])
def test_every_kind_with_epochs_extends_exactly(kind, dropout_model_dir, toy_labels_file,
                                                preference_file, tiny_gpt_dir, tmp_path):
    run, model, data = {
        "classify": (_classify, dropout_model_dir, toy_labels_file),
        "dpo": (_dpo, dropout_model_dir, preference_file),
        "reward": (_reward, tiny_gpt_dir, None),
    }[kind]
    if data is None:
        data = write_thanks_pairs(tmp_path / "pairs.json", 40, seed=3, max_words=4)
    run(model, data, tmp_path / "a", 2)
    run(model, data, tmp_path / "b", 1)
    run(model, data, tmp_path / "b", 2, resume=True)
    losses = _losses(tmp_path / "a")
    assert _losses(tmp_path / "b") == losses and len(losses) >= 2
    with pytest.raises(ConfigError, match=f"step {len(losses)}"):
        run(model, data, tmp_path / "b", 1, resume=True)
