"""Instruction fine-tuning end to end on a tiny model (book ch. 7)."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.data.instruction import format_prompt
from scratchllm.finetune import instruct
from scratchllm.finetune.instruct import finetune_instruct, generate_responses
from scratchllm.generate import generate
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import load_model_dir, save_model_dir

FAST = dict(epochs=1, batch_size=8, eval_every=100, eval_batches=1, max_new_tokens=4,
            device="cpu", progress=False)


@pytest.fixture(scope="module")
def tok(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("base") / "tiny"
    save_model_dir(path, GPTModel(GPTConfig.preset("tiny")), tok)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shared_data):
    entries = json.loads((shared_data / "instruction" / "instruction-data.json").read_text("utf-8"))
    path = tmp_path_factory.mktemp("data") / "subset.json"
    path.write_text(json.dumps(entries[:20]), encoding="utf-8")
    return path


def test_run_writes_model_metrics_and_responses(base_dir, data_file, tmp_path):
    result = finetune_instruct(base_dir, data_file, tmp_path / "run", **FAST)
    assert (result.n_train, result.n_val, result.n_test) == (17, 1, 2)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2]  # 17 // 8 batches
    assert (tmp_path / "run" / "loss.png").is_file()
    responses = json.loads(result.responses_file.read_text("utf-8"))
    source = json.loads(data_file.read_text("utf-8"))
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in responses] == source[17:19]
    assert all(isinstance(r["model_response"], str) for r in responses)
    model, _ = load_model_dir(tmp_path / "run")  # OUT resolves to OUT/latest
    base, _ = load_model_dir(base_dir)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert "out_head.weight" in changed  # every weight was trained


def test_batched_test_answers_equal_one_at_a_time_greedy(base_dir, data_file, tok):
    model, _ = load_model_dir(base_dir)
    entries = json.loads(data_file.read_text("utf-8"))[:3]
    got = generate_responses(model, tok, entries, max_new_tokens=5, batch_size=3)
    for entry, answer in zip(entries, got):
        ids = tok.encode(format_prompt(entry))
        alone = generate(model, ids, 5, eos_id=tok.eot_id)[len(ids):]
        assert answer["model_response"] == tok.decode(alone).strip()


def test_failed_generation_leaves_no_partial_results(base_dir, data_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("simulated crash while generating")

    monkeypatch.setattr(instruct, "generate_batch", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        finetune_instruct(base_dir, data_file, out, **FAST)
    assert calls and not (out / instruct.RESPONSES_FILE).exists()
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [".scratchllm"]  # the output marker, and no temp files left


def test_mask_prompt_and_lora_run(base_dir, data_file, tmp_path):
    result = finetune_instruct(base_dir, data_file, tmp_path / "lora", mask_prompt=True,
                               lora={"rank": 2, "alpha": 4.0}, generate_test=False, **FAST)
    assert result.responses_file is None
    adapter = tmp_path / "lora" / "adapter"  # PEFT's layout
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4.0
    assert (adapter / "adapter_model.safetensors").is_file()
    model, _ = load_model_dir(result.model_dir)  # merged: a plain GPT directory
    base, _ = load_model_dir(base_dir)
    # the base model plus the adapter is the merged model
    from scratchllm.weights.auto import open_model
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        merged = model(ids)
        rebuilt = open_model(base_dir, adapter=tmp_path / "lora").model(ids)
    assert torch.allclose(rebuilt, merged, atol=1e-5)
    assert torch.equal(model.tok_emb.weight, base.tok_emb.weight)  # frozen under LoRA
    assert not torch.equal(model.trf_blocks[0].att.qkv.weight, base.trf_blocks[0].att.qkv.weight)


def test_cli_instruct(base_dir, data_file, tmp_path, capsys):
    code = main(["finetune", "instruct", "--model", str(base_dir), "--data", str(data_file),
                 "--out", str(tmp_path / "cli"), "--epochs", "1", "--max-new-tokens", "3",
                 "--eval-every", "100", "--prompt-style", "phi3", "--device", "cpu", "--quiet"])
    assert code == 0
    assert "17 train, 1 val, 2 test" in capsys.readouterr().out
    assert (tmp_path / "cli" / "test_responses.json").is_file()


def test_cli_reports_bad_data_in_one_line(base_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a"}]', encoding="utf-8")
    code = main(["finetune", "instruct", "--model", str(base_dir), "--data", str(bad),
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "entry 0 lacks" in capsys.readouterr().err
