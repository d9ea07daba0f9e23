"""``scratchllm pretrain`` and ``scratchllm plot`` end to end on a tiny config."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from scratchllm.cli import main as cli_main
from scratchllm.weights.model_dir import load_model_dir

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


OUR_COMMANDS = ["scratchllm.cli.pretrain", "scratchllm.cli.plot"]


@pytest.fixture(autouse=True)
def _only_our_commands(monkeypatch):
    """Build the parser from these two commands only, so others' half-done modules can't break it."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", OUR_COMMANDS)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`scratchllm pretrain` on configs/tiny.yaml, run once: (run dir, exit code, stdout, stderr)."""
    tmp_path = tmp_path_factory.mktemp("cli")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(cli_main, "COMMAND_MODULES", OUR_COMMANDS)
        code = _pretrain(tmp_path, "--set", "sample_tokens=5", "--prompt", "Every effort")
    return tmp_path / "run", code, out.getvalue(), err.getvalue()


def _pretrain(tmp_path, *extra: str) -> int:
    return cli_main.main(["pretrain", "--config", TINY, "--out", str(tmp_path / "run"),
                          "--set", "model.emb_dim=32", "--set", "sample_tokens=0", *extra])


def test_pretrain_writes_a_loadable_run(finished_run):
    run, code, out, err = finished_run
    assert code == 0
    assert out.startswith("Every effort") and len(out.strip()) > len("Every effort")
    assert "step 6: train loss" in err and "done: step 6/6" in err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "eval" and records[-1]["step"] == 6
    assert records[-1]["tokens_seen"] == 6 * 4 * 32  # 6 steps of batch 4 x context 32
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model, tokenizer = load_model_dir(run)  # the run dir itself is a model dir (its latest/)
    assert model.config.emb_dim == 32 and model.config.n_layers == 2
    assert tokenizer is not None and tokenizer.decode(tokenizer.encode("Every effort")) == "Every effort"
    # The printed sample is what the saved model generates: the weights on disk are the trained ones.
    from scratchllm.generate import generate

    again = tokenizer.decode(generate(model, tokenizer.encode("Every effort"), 5))
    assert out.strip() == again


def test_plot_redraws_the_png(finished_run, capsys):
    run = finished_run[0]
    png = run / "loss.png"
    png.unlink()
    assert cli_main.main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"


def test_resume_uses_the_saved_config(tmp_path, capsys):
    assert _pretrain(tmp_path, "--max-steps", "2") == 0
    # No --config: without the saved config the default (bigger) model would not fit the weights.
    assert cli_main.main(["pretrain", "--resume", "--out", str(tmp_path / "run"), "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "done: step 3/3" in err


def test_resuming_a_finished_run_says_it_has_nothing_to_train(tmp_path, capsys):
    assert _pretrain(tmp_path, "--max-steps", "2") == 0
    capsys.readouterr()
    assert cli_main.main(["pretrain", "--resume", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "already finished its 2 steps: nothing left to train" in err
    assert "done: step 2/2" in err


def test_resume_with_another_length_says_what_it_does_to_the_schedule(tmp_path, capsys):
    """A new --max-steps extends a run; under the cosine decay (lr 1e-3 to 1e-4 after 2 warmup
    steps) the rate at the checkpoint's step changes, and the run says from what to what
    (hand-computed: step 4 of 4 -> 4 of 8). A length the run has passed is refused."""
    import math

    assert _pretrain(tmp_path, "--max-steps", "4", "--set", "save_every=3") == 0
    capsys.readouterr()
    assert cli_main.main(["pretrain", "--resume", "--out", str(tmp_path / "run"),
                          "--max-steps", "8"]) == 0
    err = capsys.readouterr().err

    def rate(step: int, total: int) -> float:
        return 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * (step - 2) / (total - 2)))

    assert (f"length 4 -> 8 steps: the cosine decay is re-planned over 8 steps, so the "
            f"learning rate at step 4 moves from {rate(4, 4):.3g} to {rate(4, 8):.3g}") in err
    assert "done: step 8/8" in err
    assert cli_main.main(["pretrain", "--resume", "--out", str(tmp_path / "run"),
                          "--max-steps", "5"]) == 2
    assert "it is at step 8, past the 5 steps asked for; pass --max-steps 9 or more" in \
        capsys.readouterr().err


def test_second_run_into_the_same_dir_is_refused(tmp_path, capsys):
    assert _pretrain(tmp_path, "--max-steps", "1") == 0
    capsys.readouterr()
    assert _pretrain(tmp_path, "--max-steps", "1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _pretrain(tmp_path, "--max-steps", "1", "--overwrite") == 0


@pytest.mark.parametrize("args,message", [
    (["--set", "learning_rate=0.1"], "unknown train config key(s) ['learning_rate']"),
    (["--lr", "-1"], "'lr' must be"),
    (["--data", "no/such/file.txt"], "no/such/file.txt"),
    (["--set", "oops"], "KEY=VALUE"),
    (["--batch-size", "3", "--micro-batch-size", "2"], "multiple of 'micro_batch_size'"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    assert _pretrain(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scratchllm pretrain: error:") and message in err[0]


def test_plot_of_a_missing_run(tmp_path, capsys):
    assert cli_main.main(["plot", str(tmp_path / "nothing")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_pretrain_a_llama_architecture_and_resume_it(tmp_path, capsys):
    """Llama 3 / Qwen3 presets pretrain, checkpoint and resume through the same engine."""
    from scratchllm.model.llama import LlamaModel

    args = ["pretrain", "--config", TINY, "--out", str(tmp_path / "run"), "--preset", "tiny-qwen3",
            "--set", "model.vocab_size=50257", "--set", "sample_tokens=0", "--max-steps", "2"]
    assert cli_main.main(args) == 0
    assert cli_main.main([*args[:-1], "4", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    model, tokenizer = load_model_dir(tmp_path / "run")
    assert isinstance(model, LlamaModel) and model.config.qk_norm
    assert tokenizer is not None and model.config.context_length == 32
