"""``scratchllm export RUN --to hf OUT``: transformers loads the result with the same logits, and
an instruction-tuned run's export chats in transformers (the README's lines, ``transformers
serve``) as ``scratchllm chat`` does."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scratchllm
from e2e_support import free_port, tree_bytes, wait_for_health

pytestmark = pytest.mark.slow


def test_exported_run_loads_in_transformers_with_the_same_logits(pretrain_run, exported_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, tokenizer = scratchllm.load(pretrain_run)
    hf = AutoModelForCausalLM.from_pretrained(exported_run).eval()
    text = "I had always thought Jack Gisburn rather a cheap genius"
    ids = tokenizer.encode(text)
    assert AutoTokenizer.from_pretrained(exported_run)(text).input_ids == ids
    batch = torch.tensor([ids])
    with torch.no_grad():
        expected, got = ours(batch), hf(batch).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (exported_run / ".scratchllm").is_file()


def test_export_refuses_a_folder_with_the_users_config_json(cli_error, pretrain_run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    (out / "notes.txt").write_text("do not lose me\n")
    before = tree_bytes(out)
    line = cli_error(["export", pretrain_run, "--to", "hf", out], "export")
    assert "not written by scratchllm" in line
    assert tree_bytes(out) == before


def test_export_twice_needs_overwrite(cli, cli_error, pretrain_run, exported_run, tmp_path):
    out = Path(shutil.copytree(exported_run, tmp_path / "again"))  # an earlier export
    first = tree_bytes(out)
    line = cli_error(["export", pretrain_run / "latest", "--to", "hf", out], "export")
    assert "--overwrite" in line
    assert tree_bytes(out) == first
    cli(["export", pretrain_run / "latest", "--to", "hf", out, "--overwrite"])
    again = tree_bytes(out)
    assert again.keys() == first.keys()
    assert all(again[k] == first[k] for k in first if k != ".scratchllm")  # same model, rewritten


# --------------------------------------------------------------------------- an export that chats

def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    start = text.index(f"### {title}")
    end = text.find("\n#", start + 4)
    return text[start:end if end != -1 else None]


@pytest.fixture(scope="module")
def sft_hf(cli, gpt2_hf_dir, instruct_file, e2e_root):
    """``finetune instruct --prompt-style phi3`` (with checkpoints) on the tiny GPT-2, then
    ``export --to hf``."""
    run, out = e2e_root / "sft" / "phi3-for-export", e2e_root / "exports" / "phi3-hf"
    cli(["finetune", "instruct", "--model", gpt2_hf_dir, "--data", instruct_file, "--out", run,
         "--prompt-style", "phi3", "--no-test-responses", "--epochs", "1", "--batch-size", "4",
         "--max-length", "192", "--eval-every", "2", "--lr", "1e-3", "--device", "cpu",
         "--precision", "fp32", "--quiet", "--save-every", "2"])
    cli(["export", run, "--to", "hf", out])
    return run, out


@pytest.fixture(scope="module", autouse=True)
def transformers_serve(sft_hf, cli_runner):
    """The README's ``transformers serve`` line on the export, started as the module starts:
    it takes tens of seconds to import on two busy cores, and boots while the tests run."""
    _, out = sft_hf
    line = next(li for li in readme_section("Run your model elsewhere").splitlines()
                if li.startswith("transformers serve"))
    port = free_port()
    argv = shlex.split(line.split(" #", 1)[0].replace("out/sft-hf", str(out)))
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = str(Path(sys.executable).with_name("transformers"))
    if not Path(argv[0]).exists():
        pytest.skip("the transformers command-line tool is not installed")
    log = out.parent / "transformers-serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=cli_runner.env, stdout=sink,
                                   stderr=subprocess.STDOUT)
    yield process, f"http://localhost:{port}", log
    process.kill()  # a test server: no requests left to finish
    process.wait(30)


def _chat_answer(cli, model, question: str, tokens: int) -> str:
    return cli(["chat", "--model", model, "--max-new-tokens", tokens],
               stdin=f"{question}\n/quit\n").stdout.strip()


def test_export_remembers_the_prompt_format(sft_hf, transformers_serve):
    run, out = sft_hf
    checkpoints = sorted((run / "checkpoints").iterdir())  # what latest/ is after a Ctrl-C
    assert checkpoints
    for model in ("latest", "best", *checkpoints):
        config = json.loads((run / model / "config.json").read_text())
        assert config["metadata"]["prompt_style"] == "phi3", model
        assert config["generation"]["eos_ids"] == [scratchllm.load(run)[1].eot_id], model
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|assistant|>:" in tokenizer_config["chat_template"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [scratchllm.load(run)[1].eot_id]


def test_readme_transformers_snippet_answers_as_chat(cli, sft_hf, monkeypatch):
    """The README's Python lines, run as written on the export (in this process: transformers
    is imported already), print what ``scratchllm chat`` answers (greedy, 40 new tokens at
    most, stopping at the same end ids)."""
    run, out = sft_hf
    code = re.search(r"```python\n(.*?)```", readme_section("Run your model elsewhere"),
                     re.S).group(1)
    assert "apply_chat_template" in code and "generate" in code
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace("out/sft-hf", str(out)), "README.md", "exec"), {})
    ours = _chat_answer(cli, run, "Name three colours.", 40)
    assert ours and printed.getvalue().strip() == ours


def test_transformers_serve_chats_as_scratchllm(cli, sft_hf, transformers_serve):
    """``transformers serve`` on the export answers a chat request with the greedy answer
    ``scratchllm chat`` gives (before this export carried a chat template, HTTP 500)."""
    import httpx

    run, out = sft_hf
    process, base, log = transformers_serve
    wait_for_health(base, 300, lambda: log.read_text(errors="replace")[-2000:],
                    alive=lambda: process.poll() is None)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Add 3 and 4."}]
    reply = httpx.post(f"{base}/v1/chat/completions", trust_env=False, timeout=120, json={
        "model": str(out), "messages": messages, "max_tokens": 12, "temperature": 0})
    assert reply.status_code == 200, reply.text
    answer = reply.json()["choices"][0]["message"]["content"]
    ours = cli(["chat", "--model", run, "--max-new-tokens", 12, "--system", "Be brief."],
               stdin="Add 3 and 4.\n/quit\n").stdout.strip()
    assert ours and answer.strip() == ours
