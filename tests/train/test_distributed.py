"""Multi-process pretraining: real ``torchrun`` jobs (2 CPU processes, Gloo) against one process.

The key claim: DDP with 2 ranks x micro batch b (plus gradient accumulation) makes the same
updates as one process with micro batch 2b over the same samples, so the weights agree to
float rounding. Resume, rank-0-only files and FSDP are checked on real jobs too.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from scratchllm.errors import ConfigError, DataError
from scratchllm.model import GPTModel
from scratchllm.train import distributed
from scratchllm.train.batches import ShardBatches, WindowBatches
from scratchllm.weights.model_dir import load_model_dir
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer
from scratchllm.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS, CONTEXT, GLOBAL_BATCH = 4, 32, 8
# 2 ranks x micro batch 2 x 2 accumulation steps = 8 sequences per step; no dropout, so the
# only randomness is the data order, which does not depend on the number of processes.
RUN = dict(preset="tiny", model={"emb_dim": 32, "n_layers": 1, "n_heads": 2, "drop_rate": 0.0},
           context_length=CONTEXT, max_steps=STEPS, micro_batch_size=2, batch_size=GLOBAL_BATCH,
           lr=3e-3, warmup_steps=1, log_every=1, eval_every=4, eval_batches=3, save_every=2,
           keep_last=5, sample_tokens=4, seed=123, device="cpu", precision="fp32")


def _torchrun(tmp_path: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m scratchllm pretrain`` on the RUN config."""
    config = tmp_path / "dist.yaml"
    config.write_text(yaml.safe_dump(RUN))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "scratchllm", "pretrain", "--config", str(config), "--out", str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model_dir(path)[0].state_dict()


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    result = _torchrun(tmp, tmp / "run")
    return tmp / "run", result


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The reference: one process, micro batch 4 (= 2 ranks x 2), same global batch of 8."""
    out = tmp_path_factory.mktemp("single") / "run"
    config = TrainConfig(**{**RUN, "micro_batch_size": 4, "out_dir": str(out)})
    assert config.accum_steps == 2
    Trainer(config, stream=io.StringIO()).run()
    return out


# ---------------------------------------------------------------------------- real jobs
def test_ddp_job_writes_one_loadable_run_from_rank_0_only(ddp_run):
    run, result = ddp_run
    model, tokenizer = load_model_dir(run)
    assert model.config.n_layers == 1 and tokenizer is not None
    records = read_metrics(run / "metrics.jsonl")
    keys = [(r["event"], r["step"]) for r in records]
    assert sorted(keys) == sorted({*keys}), "a second rank wrote metrics too"
    assert [s for e, s in keys if e == "train"] == [1, 2, 3, 4]
    assert [s for e, s in keys if e == "eval"] == [1, 4]
    assert records[-1]["tokens_seen"] == STEPS * GLOBAL_BATCH * CONTEXT  # both ranks' tokens
    assert result.stderr.count("done: step 4/4") == 1 and "2 processes (ddp, cpu)" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1  # one sample, printed by rank 0 only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_ddp_equals_one_process_with_the_same_global_batch(ddp_run, single_run):
    run, _ = ddp_run
    _assert_close(_weights(run), _weights(single_run), atol=1e-5)
    # The logged loss is the mean over ranks: the loss of the same global batch.
    ddp = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "train"}
    one = {r["step"]: r["loss"] for r in read_metrics(single_run / "metrics.jsonl") if r["event"] == "train"}
    assert ddp.keys() == one.keys() and all(abs(ddp[s] - one[s]) < 1e-5 for s in one)
    # Training moved the weights well beyond that tolerance (not two untouched inits).
    torch.manual_seed(RUN["seed"])
    fresh = GPTModel(TrainConfig(**RUN).model_config()).state_dict()
    name = "trf_blocks.0.att.qkv.weight"
    assert (fresh[name] - _weights(run)[name]).abs().max() > 1e-3


def test_eval_losses_are_those_of_one_process_over_the_same_batches(ddp_run):
    """3 eval batches dealt to 2 ranks (rank 1 runs one padding pass) give the 1-process mean."""
    from scratchllm.tokenizers import get_tokenizer
    from scratchllm.train.batches import load_batches
    from scratchllm.train.steps import estimate_loss

    run, _ = ddp_run
    last = [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "eval"][-1]
    model = load_model_dir(run)[0]  # the weights of step 4, where that eval ran
    train, val, _ = load_batches(None, get_tokenizer("gpt2"), context_length=CONTEXT, stride=CONTEXT,
                                 batch_size=RUN["micro_batch_size"], train_ratio=0.9, seed=RUN["seed"])
    for batches, key in ((train, "train_loss"), (val, "val_loss")):
        expected = estimate_loss(model, batches.first_batches(3), device=torch.device("cpu"))
        assert abs(last[key] - expected) < 1e-5, key


def test_fsdp_job_saves_full_weights_equal_to_one_process(tmp_path, single_run):
    result = _torchrun(tmp_path, tmp_path / "run", "--distributed", "fsdp")
    assert "2 processes (fsdp, cpu)" in result.stderr
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "eval"]
    assert evals and all(math.isfinite(r["val_loss"]) for r in evals)
    # The saved model directory holds full, unsharded tensors: the 1-process run's shapes and values.
    _assert_close(_weights(tmp_path / "run"), _weights(single_run), atol=1e-5)
    # best/ is the lowest eval, gathered from the shards even where no checkpoint was due.
    lowest = min(evals, key=lambda r: r["val_loss"])
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["metadata"]
    assert best["step"] == lowest["step"] and best["val_loss"] == lowest["val_loss"]


def test_fsdp_resumes_a_ddp_checkpoint_and_writes_the_same_files(ddp_run, tmp_path):
    """Checkpoints do not depend on the engine: FSDP continues DDP's step 2 to DDP's step 4."""
    run, _ = ddp_run
    split = tmp_path / "run"
    shutil.copytree(run, split)
    shutil.rmtree(split / "checkpoints" / "step-00000004")  # as if stopped after step 2
    (split / "LATEST").write_text("step-00000002\n")
    result = _torchrun(tmp_path, split, "--resume", "--distributed", "fsdp")
    assert "resumed from" in result.stderr and "(fsdp, cpu)" in result.stderr
    _assert_close(_weights(split), _weights(run), atol=1e-5)
    # FSDP's gathered optimizer state is saved numbered like optimizer.state_dict(), as DDP's is.
    ours, theirs = (torch.load(path / "checkpoints" / "step-00000004" / "trainer_state" /
                               "optimizer.pt", weights_only=True) for path in (split, run))
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    assert ours["state"].keys() == theirs["state"].keys()
    for key in theirs["state"]:
        _assert_close(ours["state"][key], theirs["state"][key], atol=1e-5)
    steps = [(r["event"], r["step"]) for r in read_metrics(split / "metrics.jsonl")]
    assert steps == [(r["event"], r["step"]) for r in read_metrics(run / "metrics.jsonl")]


# ---------------------------------------------------------------------------- data shares
def test_ranks_read_disjoint_shares_of_the_global_batch():
    windows = [(torch.tensor([i]), torch.tensor([i + 1])) for i in range(50)]
    whole = WindowBatches(windows, 6, seed=3)
    ranks = [WindowBatches(windows, 3, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 8
    for _ in range(20):  # crosses epochs
        expected = whole.next_batch()[0].flatten().tolist()
        shares = [batches.next_batch()[0].flatten().tolist() for batches in ranks]
        assert shares[0] == expected[0::2] and shares[1] == expected[1::2]
    assert ranks[1].state_dict()["world_size"] == 2
    with pytest.raises(DataError, match="with 2 process"):
        WindowBatches(windows, 3, seed=3).load_state_dict(ranks[1].state_dict())


def test_token_file_batches_split_by_rank(tmp_path):
    from scratchllm.data import TokenShard, prepare_corpus

    (tmp_path / "a.txt").write_text("Every effort moves you. " * 200)
    prepare_corpus([tmp_path / "a.txt"], tmp_path / "tokens", workers=1, val_fraction=0.2, seed=0)
    shard = TokenShard(tmp_path / "tokens" / "train.bin")
    whole = ShardBatches(shard, 4, 8, seed=5)
    ranks = [ShardBatches(shard, 2, 8, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        x, y = whole.next_batch()
        (x0, y0), (x1, y1) = (batches.next_batch() for batches in ranks)
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2]) and torch.equal(y1, y[1::2])
    assert ranks[0].state_dict()["step"] == 3 and len(ranks[0]) == len(whole)


# ---------------------------------------------------------------------------- configuration
def test_global_batch_must_split_over_processes():
    config = TrainConfig(micro_batch_size=2, batch_size=6)
    assert config.accum_steps_for(1) == 3 and config.accum_steps_for(3) == 1
    with pytest.raises(ConfigError, match=r"multiple of micro_batch_size \(2\) x 2 processes"):
        config.accum_steps_for(2)
    with pytest.raises(ConfigError, match="'distributed' must be one of"):
        TrainConfig(distributed="deepspeed")


def test_mode_follows_the_torchrun_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.resolve_mode("auto") == "none"
    ctx, device = distributed.setup_distributed("auto", torch.device("cpu"))
    assert not ctx.enabled and ctx.is_main and ctx.all_reduce_mean(2.5, device) == 2.5
    ctx.barrier(), ctx.destroy()  # no-ops without a process group
    with pytest.raises(ConfigError, match="launch with `torchrun"):
        distributed.resolve_mode("fsdp")
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.resolve_mode("auto") == "ddp"
    with pytest.raises(ConfigError, match="would each train and write the same run"):
        distributed.resolve_mode("none")


@pytest.mark.parametrize("finished", [True, False])
def test_leaving_waits_for_every_rank_only_after_a_finished_run(monkeypatch, finished):
    """A finished run's ranks meet at a barrier before tearing the group down (a rank that
    left first could abort another at exit); after an error none waits (the others may sit in
    a collective that never completes, and torchrun stops them)."""
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda: calls.append("destroy"))
    context = distributed.DistributedContext(mode="ddp", world_size=2, owns_group=True)
    context.destroy(finished=finished)
    assert calls == (["barrier", "destroy"] if finished else ["destroy"])
    context.destroy(finished=finished)  # once only
    assert calls.count("destroy") == 1
