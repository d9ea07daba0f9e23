"""LoRA adapter directories: what is refused (and why), other ways to name one, and
``scratchllm generate --adapter``. These need no ``peft``: the files are written by hand."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from scratchllm.cli import main as cli_main
from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.generate import generate
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model.lora import apply_lora, lora_layers, save_lora
from scratchllm.tokenizers.hf import HFTokenizer
from scratchllm.weights.auto import open_model
from scratchllm.weights.hf_export import export_hf_dir
from scratchllm.weights.lora_adapter import load_lora_adapter, save_lora_adapter
from scratchllm.weights.model_dir import save_model_dir

VOCAB = 101


def tiny_gpt(emb: int = 32, tie: bool = False, vocab: int = VOCAB) -> GPTModel:
    torch.manual_seed(1)
    return GPTModel(GPTConfig(vocab_size=vocab, context_length=32, emb_dim=emb, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True,
                              tie_weights=tie)).eval()


def adapted(model=None, **lora):
    """A model with LoRA layers whose B is non-zero (as after training)."""
    model = apply_lora(model or tiny_gpt(), rank=4, alpha=8.0, **lora)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
    return model


@pytest.fixture
def adapter_dir(tmp_path):
    return save_lora_adapter(adapted(), tmp_path / "adapter", base_source="tiny")


def edit_config(directory, **changes) -> None:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_save_refuses_what_a_peft_adapter_cannot_hold(tmp_path):
    with pytest.raises(ConfigError, match="no LoRA layers"):
        save_lora_adapter(tiny_gpt(), tmp_path / "a")
    head_too = adapted()
    head_too.out_head.weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="outside the LoRA layers.*out_head"):
        save_lora_adapter(head_too, tmp_path / "a")
    tied = adapted(tiny_gpt(tie=True), target_modules=("qkv", "out_head"))
    with pytest.raises(ConfigError, match="out_head shares its weight.*tied"):
        save_lora_adapter(tied, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_save_respects_output_folders(tmp_path, adapter_dir):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not written by scratchllm"):
        save_lora_adapter(adapted(), foreign)
    assert (foreign / "mine.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="--overwrite"):
        save_lora_adapter(adapted(), adapter_dir)
    save_lora_adapter(adapted(), adapter_dir, overwrite=True)
    assert json.loads((adapter_dir / ".scratchllm").read_text())["kind"] == "lora-adapter"


@pytest.mark.parametrize("change, words", [
    ({"use_dora": True}, "use_dora"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"peft_type": "IA3"}, "peft_type"),
    ({"task_type": "SEQ_CLS"}, "task_type"),
    ({"r": 8}, "rank 4 but adapter_config.json says 8"),
    ({"lora_dropout": 2}, "lora_dropout"),
    ({"rank_pattern": {"c_attn(": 2}}, "not a valid regular expression"),
    ({"alpha_pattern": {"c_attn": "big"}}, "alpha_pattern must be"),
])
def test_unsupported_peft_settings_are_refused_by_name(adapter_dir, change, words):
    edit_config(adapter_dir, **change)
    with pytest.raises(CheckpointError, match=words):
        load_lora_adapter(tiny_gpt(), adapter_dir)


def test_damaged_or_foreign_adapters(tmp_path, adapter_dir):
    with pytest.raises(CheckpointError, match="takes 32 -> 96 features but this model's layer is 64 -> 192"):
        load_lora_adapter(tiny_gpt(emb=64), adapter_dir)
    llama = LlamaModel(LlamaConfig(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4,
                                   n_kv_groups=2, n_layers=2, hidden_dim=64, head_dim=8))
    with pytest.raises(CheckpointError, match="transformer.h.0.attn.c_attn.*no linear layer"):
        load_lora_adapter(llama, adapter_dir)
    tied = tiny_gpt(tie=True)
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 32)
    tensors["base_model.model.lm_head.lora_B.weight"] = torch.zeros(VOCAB, 4)
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="lm_head.*tie"):
        load_lora_adapter(tied, adapter_dir)
    tensors["base_model.model.lm_head.lora_magnitude_vector"] = torch.zeros(VOCAB)
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="lora_magnitude_vector is not a LoRA matrix"):
        load_lora_adapter(tiny_gpt(), adapter_dir)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_lora_adapter(tiny_gpt(), adapter_dir)
    weights.unlink()
    (adapter_dir / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(MissingFileError, match="pickle"):
        load_lora_adapter(tiny_gpt(), adapter_dir)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_lora_adapter(tiny_gpt(), tmp_path / "nowhere")


def test_adapter_passed_as_the_model_gets_a_hint(tmp_path, adapter_dir):
    with pytest.raises(MissingFileError, match="is a LoRA adapter, not a model.*--adapter"):
        open_model(adapter_dir)


def test_existing_lora_layers_must_match(adapter_dir):
    with pytest.raises(CheckpointError, match="adapts 8 modules"):
        load_lora_adapter(apply_lora(tiny_gpt(), rank=4, target_modules=("qkv",)), adapter_dir)
    with pytest.raises(CheckpointError, match="rank 2 .* rank 4"):
        load_lora_adapter(apply_lora(tiny_gpt(), rank=2, alpha=8.0), adapter_dir)


def test_run_dir_and_older_lora_file_work_as_adapter(tmp_path):
    model = adapted()
    with torch.no_grad():
        expected = model(torch.arange(10)[None])
    base = save_model_dir(tmp_path / "base", tiny_gpt())
    save_lora_adapter(model, tmp_path / "run" / "adapter")
    old_file = save_lora(model, tmp_path / "old" / "lora.safetensors")
    peft_file = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    for adapter in (tmp_path / "run", old_file, peft_file):
        loaded = open_model(base, adapter=adapter)
        assert not lora_layers(loaded.model)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(torch.arange(10)[None]), expected,
                                       atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> HFTokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(["Hello world, the quick brown fox jumps."] * 20, trainer)
    directory = tmp_path_factory.mktemp("tok")
    backend.save(str(directory / "tokenizer.json"))
    return HFTokenizer.from_file(directory / "tokenizer.json", {"eos_token": "<|endoftext|>"})


@pytest.mark.parametrize("base_kind", ["scratchllm", "hf"])
def test_generate_with_adapter(tmp_path, capsys, monkeypatch, tokenizer, base_kind):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.generate"])
    base_model = tiny_gpt(vocab=tokenizer.vocab_size)
    if base_kind == "hf":
        base = export_hf_dir(base_model, tmp_path / "base", tokenizer)
    else:
        base = save_model_dir(tmp_path / "base", base_model, tokenizer)
    model = adapted(tiny_gpt(vocab=tokenizer.vocab_size))
    adapter = save_lora_adapter(model, tmp_path / "adapter", base_source=base)
    prompt = "Hello world"
    ids = tokenizer.encode(prompt)
    with_adapter = generate(model, ids, 12)[len(ids):]
    without = generate(tiny_gpt(vocab=tokenizer.vocab_size), ids, 12)[len(ids):]
    assert with_adapter != without

    args = ["generate", prompt, "--max-new-tokens", "12", "--no-eos-stop", "--model", str(base)]
    assert cli_main.main([*args, "--adapter", str(adapter)]) == 0
    assert capsys.readouterr().out == prompt + tokenizer.decode(with_adapter) + "\n"
    assert cli_main.main(args) == 0
    assert capsys.readouterr().out == prompt + tokenizer.decode(without) + "\n"
    assert cli_main.main([*args, "--adapter", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1
