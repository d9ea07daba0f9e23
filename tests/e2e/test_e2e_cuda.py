"""The CUDA paths, run as a user runs them: bf16 autocast, torch.compile, SDPA's flash kernel,
``torchrun`` with DDP and FSDP, generation, fine-tuning and the server on a GPU.

These tests skip where no CUDA device is present (CI has none); they run on a GPU machine
with ``SCRATCHLLM_E2E_SPAWN=1 pytest tests/e2e/test_e2e_cuda.py`` (a fresh interpreter per
command, so no CUDA state crosses a fork). References are the same as on the CPU:
``transformers``' logits, the CPU run of the same command, and hand-set expectations.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2e_support import PROMPT, hf_greedy, start_serve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY_RUN = ["--preset", "tiny", "--context-length", 32, "--batch-size", 4, "--eval-every", 1,
            "--set", "eval_batches=1", "--set", "sample_tokens=4", "--seed", 7]


def _losses(run: Path) -> dict[int, float]:
    """Step -> loss on the same training batches after that step (evaluated every step, so
    two runs' values are equal exactly when their weights are)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if r["event"] == "eval"}


@pytest.fixture(scope="module")
def cuda_run(cli, corpus_file, e2e_root) -> tuple[Path, str]:
    """Six steps on the GPU with ``--precision auto`` (bf16 autocast on a bf16-capable GPU)."""
    run = e2e_root / "cuda" / "full"
    proc = cli(["pretrain", "--data", corpus_file, *TINY_RUN, "--max-steps", 6, "--save-every",
                3, "--out", run, "--device", "cuda", "--precision", "auto"])
    return run, proc.stdout + proc.stderr


def test_pretrain_on_cuda_autocasts_bf16_and_learns(cuda_run):
    run, out = cuda_run
    assert "on cuda" in out and "bf16 autocast, fp32 weights" in out, out
    losses = _losses(run)
    assert sorted(losses) == list(range(1, 7)) and all(v == v for v in losses.values())
    assert losses[6] < losses[1]  # six steps at the default lr move a fresh model downhill
    assert (run / "latest").exists() and (run / "checkpoints").is_dir()


def test_cuda_resume_continues_the_run(cli, cuda_run, corpus_file, e2e_root):
    """Three steps, stop, ``--resume`` to six: the same losses as the run that never stopped."""
    full, _ = cuda_run
    run = e2e_root / "cuda" / "resumed"
    base = ["pretrain", "--data", corpus_file, *TINY_RUN, "--save-every", 3, "--out", run,
            "--device", "cuda", "--precision", "auto"]
    cli([*base, "--max-steps", 3])
    cli([*base, "--max-steps", 6, "--resume"])
    want, got = _losses(full), _losses(run)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):  # cuBLAS/SDPA on one GPU repeat themselves; allow last-bit noise
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got, want)


@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_compiled_training_on_cuda_matches_eager(cli, cuda_run, corpus_file, e2e_root, mode):
    full, _ = cuda_run
    run = e2e_root / "cuda" / f"compile-{mode}"
    proc = cli(["pretrain", "--data", corpus_file, *TINY_RUN, "--max-steps", 3, "--out", run,
                "--device", "cuda", "--precision", "auto", "--compile", mode])
    out = proc.stdout + proc.stderr
    want, got = _losses(full), _losses(run)
    assert "bf16 autocast" in out
    for step in (1, 2, 3):  # fused bf16 kernels round differently from eager ones
        assert got[step] == pytest.approx(want[step], rel=2e-2), (step, got, want)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_on_cuda_trains_like_one_process(cli_runner, cuda_run, corpus_file, e2e_root,
                                                  mode):
    """``torchrun --nproc_per_node 1 -m scratchllm pretrain --distributed MODE`` on NCCL."""
    full, _ = cuda_run
    run = e2e_root / "cuda" / f"torchrun-{mode}"
    env = {**cli_runner.env, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "-m", "scratchllm", "pretrain", "--data", corpus_file,
            *map(str, TINY_RUN), "--max-steps", "3", "--save-every", "3", "--out", run,
            "--device", "cuda", "--precision", "auto", "--distributed", mode]
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=cli_runner.cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"1 processes ({mode}, cuda)" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    want, got = _losses(full), _losses(run)
    for step in (1, 2, 3):
        assert got[step] == pytest.approx(want[step], rel=1e-3), (step, got, want)
    assert (run / "latest").exists()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_cuda_logits_match_transformers(request, family):
    """A Hugging Face directory opened on the GPU gives transformers' (CPU, fp32) logits."""
    from transformers import AutoModelForCausalLM

    from scratchllm.weights.auto import open_model

    directory = request.getfixturevalue(f"{family}_hf_dir")
    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 8, 4]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(directory).eval()(ids).logits
        loaded = open_model(directory, device="cuda", dtype="float32")
        got = loaded.model.eval()(ids.cuda()).float().cpu()
        half = open_model(directory, device="cuda", dtype="bfloat16").model.eval()
        got_bf16 = half(ids.cuda()).float().cpu()
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    assert (got_bf16 - want).abs().max() < 0.05 * want.abs().max() + 0.05


def test_flash_attention_serves_bf16_training_and_decoding():
    """With only the flash kernel allowed, a bf16 training step and a KV-cached decode run:
    the causal paths really reach FlashAttention (SDPA raises when no allowed kernel fits)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from scratchllm.generate import generate
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, context_length=64, emb_dim=128, n_heads=2, n_layers=2,
                       drop_rate=0.1, qkv_bias=False)
    model = GPTModel(config).cuda()
    ids = torch.randint(0, 256, (2, 64), device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
        model.train()
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model = model.to(torch.bfloat16).eval()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fast = generate(model, ids[:1, :10], 12)
    plain = generate(model, ids[:1, :10], 12)
    assert torch.equal(fast.cpu(), plain.cpu())


def test_generate_on_cuda_in_bf16_prints_stats(cli, pretrain_run):
    proc = cli(["generate", "--model", pretrain_run, "--device", "cuda", "--dtype", "bf16",
                "--max-new-tokens", 8, "--stats", PROMPT])
    assert proc.stdout.startswith(PROMPT)
    assert "tokens/s" in proc.stderr, proc.stderr


def test_int8_on_cuda_runs_through_torchao_or_says_what_is_missing(cli, cli_error,
                                                                    pretrain_run):
    argv = ["generate", "--model", pretrain_run, "--device", "cuda", "--quantize", "int8",
            "--max-new-tokens", 8, PROMPT]
    if importlib.util.find_spec("torchao") is None:
        assert "needs torchao" in cli_error(argv, "generate")
    else:
        assert cli(argv).stdout.startswith(PROMPT)


def test_finetune_commands_run_on_cuda(cli_many, gpt2_hf_dir, instruct_file, preference_file,
                                       e2e_root):
    where = ["--device", "cuda", "--precision", "bf16", "--quiet"]
    outs = {k: e2e_root / "cuda" / f"ft-{k}" for k in ("instruct", "dpo", "reward", "grpo")}
    cli_many([
        ["finetune", "instruct", "--model", gpt2_hf_dir, "--data", instruct_file, "--out",
         outs["instruct"], "--epochs", "1", "--batch-size", "4", "--max-length", "192",
         "--no-test-responses", *where],
        ["finetune", "dpo", "--model", gpt2_hf_dir, "--data", preference_file, "--out",
         outs["dpo"], "--epochs", "1", "--batch-size", "4", *where],
        ["finetune", "reward", "--model", gpt2_hf_dir, "--data", preference_file, "--out",
         outs["reward"], "--epochs", "1", "--batch-size", "4", *where],
    ])
    for name, saved in (("instruct", "latest"), ("dpo", "latest"), ("reward", "model")):
        rows = [json.loads(x) for x in (outs[name] / "metrics.jsonl").read_text().splitlines()]
        assert rows and (outs[name] / saved).exists(), name
    results = json.loads((outs["reward"] / "results.json").read_text())
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    rl = ["--max-steps", "2", "--rollout-batch", "2", "--minibatch", "2", "--ppo-epochs", "1",
          "--max-new-tokens", "8"]
    cli_many([["finetune", "ppo", "--policy", gpt2_hf_dir, "--reward-model", outs["reward"],
               "--prompts", instruct_file, "--out", outs["grpo"], "--algorithm", "grpo",
               "--group-size", "2", "--lora-rank", "4", *rl, *where]])
    rows = [json.loads(x) for x in (outs["grpo"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["kl"] >= 0 for r in rows)


def test_serve_on_cuda_completes_like_transformers(cli_runner, gpt2_hf_dir):
    import httpx

    server, base = start_serve(cli_runner, ["--model", gpt2_hf_dir, "--device", "cuda",
                                            "--max-batch", "2", "--model-name", "tiny"])
    try:
        answer = httpx.post(f"{base}/v1/completions", trust_env=False, timeout=120, json={
            "model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    finally:
        cli_runner.signal(server, signal.SIGTERM)
        done = cli_runner.finish(server, timeout=60)
    assert answer["choices"][0]["text"] == hf_greedy(gpt2_hf_dir, PROMPT, 12)[len(PROMPT):]
    assert "Traceback" not in done.stderr, done.stderr
