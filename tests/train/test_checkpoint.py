"""Model directories: save_model_dir / load_model_dir round trips, damage and interruptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights import model_dir as checkpoint
from scratchllm.weights.model_dir import load_model_dir, save_model_dir


def small_config(**overrides) -> GPTConfig:
    values = dict(vocab_size=97, context_length=16, emb_dim=16, n_heads=2, n_layers=2,
                  drop_rate=0.0)
    return GPTConfig.from_dict({**values, **overrides})


@pytest.fixture
def model() -> GPTModel:
    return GPTModel(small_config()).eval()


@pytest.fixture
def saved(tmp_path, model) -> Path:
    return save_model_dir(tmp_path / "model", model, metadata={"step": 7})


def logits(model: GPTModel) -> torch.Tensor:
    ids = torch.arange(24).reshape(2, 12) % model.config.vocab_size
    with torch.no_grad():
        return model(ids)


def hidden_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tie):
    model = GPTModel(small_config(tie_weights=tie)).eval()
    out = save_model_dir(tmp_path / "m", model)
    loaded, tokenizer = load_model_dir(out)
    assert tokenizer is None and not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    assert (loaded.out_head.weight is loaded.tok_emb.weight) == tie
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    # safetensors refuses shared tensors: a tied head is stored once, as the embedding.
    assert ("out_head.weight" in keys) == (not tie) and "tok_emb.weight" in keys


def test_tied_weights_stay_tied_after_loading(tmp_path):
    model = GPTModel(small_config(tie_weights=True))
    loaded, _ = load_model_dir(save_model_dir(tmp_path / "m", model))
    with torch.no_grad():
        loaded.tok_emb.weight[0].fill_(3.0)
    assert torch.equal(loaded.out_head.weight[0], torch.full((16,), 3.0))
    assert len(list(loaded.parameters())) == len(list(model.parameters()))


def test_weights_file_is_plain_safetensors_matching_state_dict(saved, model):
    tensors = safetensors.torch.load_file(str(saved / "model.safetensors"))
    expected = model.state_dict()
    assert set(tensors) == set(expected)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, expected[name]), name


def test_config_json_layout(saved, model):
    header = json.loads((saved / "config.json").read_text())
    assert header == {"format": "scratchllm", "format_version": 1, "family": "gpt",
                      "config": model.config.to_dict(), "tokenizer": None,
                      "metadata": {"step": 7}}


def test_dtype_is_kept_or_converted(tmp_path, model):
    out = save_model_dir(tmp_path / "bf16", model.to(torch.bfloat16))
    kept, _ = load_model_dir(out)
    assert kept.tok_emb.weight.dtype == torch.bfloat16
    converted, _ = load_model_dir(out, dtype="float32", device="cpu")
    assert converted.tok_emb.weight.dtype == torch.float32
    assert torch.equal(converted.tok_emb.weight, model.tok_emb.weight.float())
    with pytest.raises(ConfigError, match="dtype"):
        load_model_dir(out, dtype="float99")


def test_tokenizer_spec_is_stored_verbatim(tmp_path, model):
    class FakeTokenizer:
        def to_dict(self):
            return {"kind": "fake", "n": 3}

    out = save_model_dir(tmp_path / "m", model, tokenizer=FakeTokenizer())
    assert json.loads((out / "config.json").read_text())["tokenizer"] == {"kind": "fake", "n": 3}
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model_dir(out)  # nobody knows how to build a "fake" tokenizer


def test_gpt2_tokenizer_round_trip(tmp_path, model):
    try:
        from scratchllm.tokenizers import get_tokenizer
        tokenizer = get_tokenizer("gpt2")
    except Exception as err:  # tokenizers package not there (yet) or no vocab files
        pytest.skip(f"GPT-2 tokenizer unavailable: {err}")
    _, loaded = load_model_dir(save_model_dir(tmp_path / "m", model, tokenizer=tokenizer))
    text = "Every effort moves you <|endoftext|> forward"
    assert loaded.encode(text, allowed_special="all") == tokenizer.encode(text,
                                                                         allowed_special="all")


def test_bad_metadata_fails_before_writing(tmp_path, model):
    with pytest.raises(ConfigError, match="JSON"):
        save_model_dir(tmp_path / "m", model, metadata={"path": Path("x")})
    assert not (tmp_path / "m").exists() and hidden_entries(tmp_path) == []


# ----------------------------------------------------------------------------- damage
def test_missing_directory_and_files(tmp_path, saved):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model_dir(saved)
    (saved / "config.json").unlink()
    with pytest.raises(MissingFileError, match="config.json"):
        load_model_dir(saved)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "hf", "format_version": 1, "family": "gpt", "config": {}}', "unknown format"),
    ('{"format": "scratchllm", "format_version": 1, "family": "mamba", "config": {}}', "family"),
    ('{"format": "scratchllm", "format_version": 9, "family": "gpt", "config": {}}',
     "format_version"),
    ('{"format": "scratchllm", "format_version": 1, "family": "gpt",'
     ' "config": {"n_heads": 3, "emb_dim": 16}}', "invalid model config"),
    ("[1, 2]", "not an object"),
])
def test_bad_config_json(saved, content, message):
    (saved / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model_dir(saved)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_file_names_it(saved, damage):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x13\x37" * 500,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="model.safetensors") as info:
        load_model_dir(saved)
    assert "corrupted" in str(info.value)


def test_missing_unexpected_and_misshapen_tensors(saved):
    path = saved / "model.safetensors"
    good = safetensors.torch.load_file(str(path))

    safetensors.torch.save_file({k: v for k, v in good.items() if k != "final_norm.bias"},
                                str(path))
    with pytest.raises(CheckpointError, match=r"lacks tensor.*final_norm\.bias"):
        load_model_dir(saved)

    safetensors.torch.save_file({**good, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected.*extra\.weight"):
        load_model_dir(saved)

    safetensors.torch.save_file({**good, "pos_emb.weight": torch.zeros(8, 16)}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model_dir(saved)
    assert "pos_emb.weight" in str(info.value) and "(8, 16)" in str(info.value)
    assert "(16, 16)" in str(info.value)


# ----------------------------------------------------------------------------- atomic saves
def _half_writer_then_crash(real):
    def writer(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("power cut")
    return writer


def test_interrupted_resave_keeps_previous_directory(tmp_path, saved, model, monkeypatch):
    before = logits(model)
    monkeypatch.setattr(safetensors.torch, "save_file",
                        _half_writer_then_crash(safetensors.torch.save_file))
    changed = GPTModel(small_config())
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(saved, changed)
    monkeypatch.undo()
    loaded, _ = load_model_dir(saved)
    assert torch.equal(logits(loaded), before)
    assert hidden_entries(tmp_path) == []  # no half-written temp directory left behind


def test_failed_rename_restores_previous_directory(tmp_path, saved, model, monkeypatch):
    real_replace = checkpoint.os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):  # the step that installs the new directory
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(saved, GPTModel(small_config()))
    monkeypatch.undo()
    assert torch.equal(logits(load_model_dir(saved)[0]), logits(model))
    assert hidden_entries(tmp_path) == []


def test_resave_replaces_and_refuses_foreign_directories(tmp_path, saved):
    other = GPTModel(small_config()).eval()
    save_model_dir(saved, other)
    assert torch.equal(logits(load_model_dir(saved)[0]), logits(other))
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="not written by scratchllm"):
        save_model_dir(precious, other)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_no_unsafe_torch_load_in_checkpoint_code():
    from scratchllm.train import state

    for module in (checkpoint, state):
        source = Path(module.__file__).read_text()
        calls = source.count("torch.load(")
        assert calls == source.count("weights_only=True)"), module
        assert "import pickle" not in source and "pickle.load" not in source
