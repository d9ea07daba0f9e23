"""A newcomer's walk through README: the mistakes and paths the other e2e files do not take."""

from __future__ import annotations

import json

import pytest

from e2e_support import tree_bytes

pytestmark = pytest.mark.slow


@pytest.fixture
def responses_file(tmp_path):
    """What `finetune instruct` writes into OUT/test_responses.json, two answers long."""
    path = tmp_path / "test_responses.json"
    path.write_text(json.dumps([
        {"instruction": "Name a colour.", "input": "", "output": "Red.", "model_response": "Blue."},
        {"instruction": "Add.", "input": "2+2", "output": "4", "model_response": "5"},
    ]), encoding="utf-8")
    return path


@pytest.mark.parametrize("users_file", ["report.jsonl", "report.json"])
def test_judge_never_truncates_a_users_file_beside_its_out(cli_error, responses_file, tmp_path,
                                                           users_file):
    """`--out report.json` also writes report.jsonl (the per-item log): a user's file of either
    name is refused before any request, not emptied."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / users_file).write_text('{"three years": "of work"}\n')
    before = tree_bytes(folder)
    line = cli_error(["evaluate", "judge", "--responses", responses_file,
                      "--endpoint", "http://127.0.0.1:9", "--out", folder / "report.json"],
                     "evaluate")
    assert users_file in line and "not written by scratchllm" in line, line
    assert tree_bytes(folder) == before


def test_rerunning_prepare_suggests_only_flags_it_has(cli, cli_error, corpus_file, tmp_path):
    """`prepare` (and `export`) have --overwrite but no --resume: the refusal must not send a
    user to a flag argparse then rejects."""
    out = tmp_path / "prepared"
    cli(["prepare", corpus_file, "--out", out, "--workers", "1"])
    line = cli_error(["prepare", corpus_file, "--out", out, "--workers", "1"], "prepare")
    assert "--overwrite" in line and "--resume" not in line, line


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_bad_sampling_flag_is_refused_before_the_model_loads(cli_runner, gpt2_hf_dir, tmp_path,
                                                               command):
    """A typo'd --temperature is reported at once (not after loading a multi-GB model), and
    generate's stdout stays empty instead of holding the echoed prompt."""
    argv = {"generate": ["generate", "--model", gpt2_hf_dir, "--temperature", "-1", "Hi"],
            "chat": ["chat", "--model", gpt2_hf_dir, "--temperature", "-1"]}[command]
    proc = cli_runner.run(argv, stdin="")
    assert proc.returncode == 2 and "temperature" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    missing = [a if a != gpt2_hf_dir else tmp_path / "no-such-model" for a in argv]
    line = cli_runner.error(missing, command, stdin="")
    assert "temperature" in line, line


def test_a_model_with_its_own_bpe_exports_a_tokenizer_transformers_runs(cli, corpus_file,
                                                                      tmp_path):
    """README's speedrun trains its own BPE (`tokenizer: bpe:N`); `export --to hf` used to write
    no tokenizer at all, so `AutoTokenizer.from_pretrained(OUT)` failed."""
    from transformers import AutoTokenizer

    from e2e_support import generated, hf_greedy
    from scratchllm.weights.auto import open_model

    run, out = tmp_path / "run", tmp_path / "run-hf"
    cli(["pretrain", "--data", corpus_file, "--preset", "tiny", "--max-steps", 1, "--out", run,
         "--context-length", 32, "--batch-size", 2, "--set", "tokenizer=bpe:300",
         "--set", "model.vocab_size=300", "--set", "eval_batches=1", "--set", "sample_tokens=0",
         "--device", "cpu", "--precision", "fp32"])
    cli(["export", run, "--to", "hf", out])
    ours = open_model(run).tokenizer
    theirs = AutoTokenizer.from_pretrained(out)
    text = "The Verdict, 1908 <|endoftext|> naïve café  \n\n  end"
    assert theirs(text).input_ids == ours.encode(text, allowed_special="all")
    assert theirs.decode(ours.encode(text, allowed_special="all")) == text
    assert theirs.eos_token == "<|endoftext|>"
    prompt = "I had always thought"
    proc = cli(["generate", "--model", run, "--max-new-tokens", 8, prompt])
    assert generated(proc) == hf_greedy(out, prompt, 8)


@pytest.mark.parametrize("argv", [["info", "--preset", "gpt2-small"], ["--help"]])
def test_output_piped_into_a_reader_that_stops_is_no_traceback(cli_runner, argv):
    """`scratchllm generate ... | head -1`: when the reader goes away, the command ends quietly
    (as `cat` does) instead of printing a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *argv], env=cli_runner.env,
                            cwd=cli_runner.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)  # 141: ended by the closed pipe, as cat is
    assert "Traceback" not in err and "BrokenPipe" not in err, err
