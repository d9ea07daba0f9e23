"""Fine-tuning journeys on a Hugging Face GPT-2 and a Llama 3 directory, as a user runs them.

``finetune instruct`` (full and LoRA) and ``finetune dpo`` (from the instruction-tuned run)
-> ``generate --model OUT``; ``finetune classify`` -> ``classify OUT`` and ``evaluate
classification``. Every run is one epoch on a few examples written here.
"""

from __future__ import annotations

import http.server
import json
import math
import threading

import pytest
import torch

from e2e_support import PROMPT, copy_run, generated

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "4", "--max-length", "192", "--eval-every", "2",
              "--lr", "1e-3", "--device", "cpu", "--precision", "fp32", "--quiet"]
FAMILIES = ["gpt2", "llama"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_dirs(gpt2_hf_dir, llama_hf_dir):
    return {"gpt2": gpt2_hf_dir, "llama": llama_hf_dir}


@pytest.fixture(scope="module")
def sft_runs(cli_many, base_dirs, instruct_file, e2e_root):
    """``finetune instruct``: {(family, lora): (OUT, stdout)}; Llama's full-weight path is
    exercised by ``finetune dpo`` below, which keeps the number of runs down."""
    keys = [("gpt2", False), ("gpt2", True), ("llama", True)]  # Llama full: see dpo_runs
    argvs, outs = [], []
    for family, lora in keys:
        out = e2e_root / "sft" / f"{family}-{'lora' if lora else 'full'}"
        argv = ["finetune", "instruct", "--model", base_dirs[family], "--data", instruct_file,
                "--out", out, "--max-new-tokens", "4", *TRAIN_ARGS]
        argvs.append(argv + (["--lora-rank", "4", "--lora-alpha", "8"] if lora else []))
        outs.append(out)
    procs = cli_many(argvs)
    return {key: (out, proc.stdout) for key, out, proc in zip(keys, outs, procs)}


@pytest.fixture(scope="module")
def dpo_runs(cli_many, sft_runs, preference_file, e2e_root):
    """``finetune dpo`` from an instruction-tuned run: GPT-2 with LoRA, Llama without."""
    gpt2_out, llama_out = e2e_root / "dpo" / "gpt2-lora", e2e_root / "dpo" / "llama-full"
    cli_many([
        ["finetune", "dpo", "--model", sft_runs["gpt2", False][0], "--data", preference_file,
         "--out", gpt2_out, "--beta", "0.1", "--lora-rank", "4", *TRAIN_ARGS],
        ["finetune", "dpo", "--model", sft_runs["llama", True][0], "--data", preference_file,
         "--out", llama_out, "--beta", "0.1", *TRAIN_ARGS],
    ])
    return {"gpt2": gpt2_out, "llama": llama_out}


def _weights(source) -> dict[str, torch.Tensor]:
    from scratchllm.weights.auto import open_model

    return {k: v.float() for k, v in open_model(source).model.state_dict().items()}


def _greedy(source, prompt: str, new: int) -> str:
    """A plain greedy loop (full forward each step, no cache) on the model ``open_model`` gives."""
    from scratchllm.weights.auto import open_model

    loaded = open_model(source)
    tok = loaded.tokenizer
    ids = tok.encode_prompt(prompt) if hasattr(tok, "encode_prompt") else tok.encode(prompt)
    start = len(ids)
    with torch.no_grad():
        for _ in range(new):
            nxt = int(loaded.model(torch.tensor([ids]))[0, -1].argmax())
            if nxt in loaded.eos_ids:
                break
            ids.append(nxt)
    return prompt + tok.decode(ids[start:])


@pytest.mark.parametrize(("family", "lora"), [("gpt2", False), ("gpt2", True), ("llama", True)],
                         ids=["gpt2-full", "gpt2-lora", "llama-lora"])
def test_finetune_instruct_writes_a_tuned_model_and_test_answers(sft_runs, base_dirs, family,
                                                                 lora):
    out, stdout = sft_runs[family, lora]
    assert "examples: 17 train, 1 val, 2 test" in stdout
    answers = json.loads((out / "test_responses.json").read_text())
    assert len(answers) == 2 and all(isinstance(a["model_response"], str) for a in answers)
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("train") == 4 and "eval" in events  # 17 examples // batch 4
    assert (out / "adapter" / "adapter_config.json").is_file() == lora
    base, tuned = _weights(base_dirs[family]), _weights(out)
    assert tuned.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed
    if lora:  # LoRA touches the linear layers only, never embeddings or norms
        assert not any("emb" in k or "norm" in k for k in changed), sorted(changed)


def test_generate_from_every_finetuned_run(cli_many, sft_runs, dpo_runs):
    outs = [out for out, _ in sft_runs.values()] + list(dpo_runs.values())
    procs = cli_many([["generate", "--model", out, "--max-new-tokens", "8", PROMPT]
                      for out in outs])
    for out, proc in zip(outs, procs):
        assert generated(proc) == _greedy(out, PROMPT, 8), out


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_dpo_from_the_instruction_tuned_run(dpo_runs, sft_runs, family):
    out = dpo_runs[family]
    source = sft_runs[family, family == "llama"][0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and all(torch.isfinite(torch.tensor(r["val_loss"])) for r in evals)
    train = [r for r in records if r["event"] == "train"]
    assert train[-1]["tokens_seen"] > 0  # the responses were scored, not truncated away
    assert train[-1]["loss"] != pytest.approx(math.log(2), abs=1e-6)  # the policy moved
    assert (out / "adapter" / "adapter_model.safetensors").is_file() == (family == "gpt2")
    before, after = _weights(source), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _labelled(spam_file) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in spam_file.read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_journey(family, cli, cli_error, base_dirs, spam_file, pretrain_run,
                            tmp_path):
    args = ["--data", spam_file, "--epochs", "1", "--batch-size", "8", "--trainable", "all",
            "--lr", "1e-3", "--device", "cpu", "--precision", "fp32"]
    if family == "gpt2":  # --out names an existing pretraining run: refused, then replaced
        out = copy_run(pretrain_run, tmp_path / "run")
        metrics = (out / "metrics.jsonl").read_bytes()
        line = cli_error(["finetune", "classify", "--model", base_dirs[family], "--out", out,
                          *args], "finetune")
        assert "--overwrite" in line and (out / "metrics.jsonl").read_bytes() == metrics
        assert (out / "checkpoints").is_dir()
        cli(["finetune", "classify", "--model", base_dirs[family], "--out", out, "--overwrite",
             *args])
        assert not (out / "checkpoints").exists()
    else:
        out = tmp_path / "clf"
        cli(["finetune", "classify", "--model", base_dirs[family], "--out", out, *args])
    results = json.loads((out / "results.json").read_text())
    assert {"train", "val", "test"} <= set(results["metrics"])

    rows = _labelled(spam_file)
    predicted = cli(["classify", out, *(text for _, text in rows)]).stdout.splitlines()
    assert len(predicted) == len(rows)
    labels = [line.split("\t")[0] for line in predicted]
    assert set(labels) <= {"ham", "spam"}
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in predicted)

    report_file = tmp_path / "report.json"
    shown = cli(["evaluate", "classification", "--model", out, "--data", spam_file,
                 "--out", report_file]).stdout
    report = json.loads(report_file.read_text())
    # `evaluate classification` and `classify` agree text by text
    truth = [label for label, _ in rows]
    assert report["n"] == len(rows)
    assert report["accuracy"] == pytest.approx(sum(map(str.__eq__, truth, labels)) / len(rows))
    ham_as_spam = sum(t == "ham" and p == "spam" for t, p in zip(truth, labels))
    assert report["confusion_matrix"][0][1] == ham_as_spam
    assert f"accuracy {report['accuracy'] * 100:.2f}%" in shown


class _Judge(http.server.BaseHTTPRequestHandler):
    """A stand-in Ollama judge on the loopback that gives every answer 85."""

    prompts: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body)
        reply = json.dumps({"message": {"role": "assistant", "content": "Score: 85"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_judge_scores_the_test_responses_of_a_finetuned_run(cli, sft_runs, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        responses = sft_runs["gpt2", False][0] / "test_responses.json"
        out = tmp_path / "scores.json"
        proc = cli(["evaluate", "judge", "--responses", responses, "--endpoint",
                    f"http://127.0.0.1:{server.server_port}", "--api", "ollama",
                    "--workers", "2", "--out", out])
    finally:
        server.shutdown()
        server.server_close()
    answers = json.loads(responses.read_text())
    assert "average score: 85.00 / 100" in proc.stdout
    assert json.loads(out.read_text())["average_score"] == 85
    assert len(_Judge.prompts) == len(answers)
    asked = " ".join(p["messages"][0]["content"] for p in _Judge.prompts)
    assert all(a["model_response"] in asked and a["output"] in asked for a in answers)


def test_readme_save_every_and_resume(cli, sft_runs, base_dirs, instruct_file, e2e_root):
    """README: ``finetune instruct ... --save-every 50 --resume``. With nothing to resume it
    starts a new run (checkpointing changes no number: the model equals the run made without
    checkpoints); run again, it resumes the finished run and leaves the model as it was."""
    out = e2e_root / "sft" / "gpt2-checkpointed"
    argv = ["finetune", "instruct", "--model", base_dirs["gpt2"], "--data", instruct_file,
            "--out", out, "--max-new-tokens", "4", "--no-test-responses", *TRAIN_ARGS,
            "--save-every", "2", "--resume"]
    cli(argv)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000002", "step-00000004"]
    first = _weights(out)
    reference = _weights(sft_runs["gpt2", False][0])
    assert all(torch.equal(first[k], reference[k]) for k in reference)
    cli(argv)
    again = _weights(out)
    assert all(torch.equal(first[k], again[k]) for k in first)
