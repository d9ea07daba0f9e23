"""``scratchllm info`` through the real entry point (book 4.6 numbers)."""

from __future__ import annotations

import json

import pytest

from scratchllm.cli import main as cli_main


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``scratchllm ARGS`` with only the info command registered (others may be mid-edit)."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.info"])

    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_info_is_registered_in_main():
    assert "scratchllm.cli.info" in cli_main.COMMAND_MODULES


def test_json_gpt2_small_book_numbers(run_cli):
    code, out, _ = run_cli("info", "--preset", "gpt2-small", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"]["total"] == 163_009_536
    assert info["parameters"]["embedding"] + info["parameters"]["non_embedding"] == 163_009_536
    assert info["memory"]["fp32"]["MB"] == 621.83
    assert info["memory"]["bf16"]["bytes"] == 2 * 163_009_536
    assert info["config"]["emb_dim"] == 768
    fwd = info["flops_per_token"]["forward"]
    assert info["flops_per_token"]["training"] == 3 * fwd
    assert 2 * 124e6 < fwd < 2 * 163e6 + 2 * 12 * 1024 * 768 + 1


def test_tie_weights_and_context_length(run_cli):
    code, out, _ = run_cli("info", "--preset", "gpt2-small", "--tie-weights",
                           "--context-length", "256", "--json")
    assert code == 0
    info = json.loads(out)
    # 124,412,160 minus the 768 position rows that a 256 context no longer needs.
    assert info["parameters"]["total"] == 124_412_160 - (1024 - 256) * 768
    assert info["parameters"]["out_head"] == 0
    assert info["flops_per_token"]["seq_len"] == 256


def test_text_output(run_cli):
    code, out, _ = run_cli("info", "--preset", "gpt2-xl")
    assert code == 0
    assert "1,637,792,000" in out  # GPT-2 XL, untied (book exercise 4.3)
    assert "6,247.68 MB" in out
    assert "fp32" in out and "bf16" in out and "GB" in out
    assert "forward" in out and "training" in out


def test_unknown_preset_exits_2_with_choices(run_cli):
    code, out, err = run_cli("info", "--preset", "gpt9")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1  # one line, no traceback
    assert "gpt9" in err and "gpt2-small" in err and "tiny" in err


def test_bad_context_length_exits_2(run_cli):
    code, _, err = run_cli("info", "--preset", "tiny", "--context-length", "0")
    assert code == 2
    assert "context_length" in err


# README: "Model sizes, memory and FLOPs of any architecture"; pretrain takes these presets.
@pytest.mark.parametrize("name, total", [("llama3.2-1b", 1_235_814_400),  # book's notebooks
                                         ("qwen3-0.6b", 596_049_920),
                                         ("tiny-llama", None), ("tiny-qwen3", None)])
def test_llama_and_qwen3_presets_are_described(run_cli, name, total):
    import torch

    from scratchllm.model import LlamaConfig, LlamaModel

    with torch.device("meta"):
        model = LlamaModel(LlamaConfig.preset(name))
    counted = sum(p.numel() for p in model.parameters())  # a tied head counts once
    code, out, _ = run_cli("info", "--preset", name, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"]["total"] == counted == (total or counted)
    assert info["parameters"]["position_embedding"] == 0  # RoPE has no table
    assert info["parameters"]["token_embedding"] == model.tok_emb.weight.numel()
    assert info["parameters"]["out_head"] == (0 if model.config.tie_weights
                                              else model.out_head.weight.numel())
    assert info["memory"]["bf16"]["bytes"] == 2 * counted
    c = model.config
    head = c.vocab_size * c.emb_dim
    attention = 2 * c.n_layers * c.context_length * c.n_heads * c.head_dim
    non_embedding = counted - model.tok_emb.weight.numel()
    untied_non_embedding = non_embedding + (head if c.tie_weights else 0)
    assert info["flops_per_token"]["forward"] == 2 * untied_non_embedding + attention


def test_unknown_preset_lists_every_family(run_cli):
    code, _, err = run_cli("info", "--preset", "nosuch")
    assert code == 2
    assert "gpt2-small" in err and "llama3.2-1b" in err and "qwen3-0.6b" in err
