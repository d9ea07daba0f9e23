"""GGUF export refuses what llama.cpp cannot run, and never overwrites a file it did not write."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")

from gguf_support import hf_tokenizer, loaded_model, tiny_gpt, tiny_llama  # noqa: E402

from scratchllm.errors import ConfigError, ScratchLLMError, TokenizerError  # noqa: E402
from scratchllm.weights import gguf_export  # noqa: E402
from scratchllm.export.gguf import export_gguf  # noqa: E402
from scratchllm.weights.gguf_export import write_gguf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return hf_tokenizer()


@pytest.fixture(scope="module")
def gpt(tok):
    return tiny_gpt(tok.vocab_size)


def test_unsupported_type_names_the_supported_ones(tmp_path, gpt, tok):
    with pytest.raises(ConfigError, match="f32, f16, bf16, q8_0"):
        write_gguf(gpt, tok, tmp_path / "m.gguf", type_name="q4_0")
    assert not list(tmp_path.iterdir())


def test_unsupported_family_names_the_supported_ones(tmp_path, tok):
    with pytest.raises(ConfigError, match="gpt2.*llama.*qwen3"):
        write_gguf(torch.nn.Linear(4, 4), tok, tmp_path / "m.gguf")
    qwen = tiny_llama(tok.vocab_size, qwen3=True)
    qwen.config.rope_scaling = tiny_llama(tok.vocab_size).config.rope_scaling
    with pytest.raises(ConfigError, match="qwen3.*RoPE scaling"):
        write_gguf(qwen, tok, tmp_path / "q.gguf")


def test_tokenizers_llama_cpp_cannot_run(tmp_path, gpt, tok):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from scratchllm.tokenizers.hf import HFTokenizer
    from scratchllm.tokenizers.simple import SimpleTokenizer

    backend = Tokenizer.from_str(tok.backend.to_str())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(TokenizerError, match="gpt-2, llama-bpe, qwen2"):
        write_gguf(gpt, HFTokenizer(backend, {"eos_token": "<|endoftext|>"}), tmp_path / "a.gguf")
    words = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerError, match="byte-level BPE"):
        write_gguf(gpt, HFTokenizer(words, {"eos_token": "[UNK]"}), tmp_path / "b.gguf")
    with pytest.raises(TokenizerError, match="byte-level"):
        write_gguf(gpt, SimpleTokenizer.from_text("a b c"), tmp_path / "c.gguf")
    small = tiny_gpt(100)
    with pytest.raises(ConfigError, match="100 embedding rows"):
        write_gguf(small, tok, tmp_path / "d.gguf")
    assert not list(tmp_path.iterdir())


def test_foreign_file_is_never_replaced(tmp_path, gpt, tok):
    theirs = tmp_path / "model.gguf"
    theirs.write_bytes(b"GGUF\x03\x00\x00\x00someone else's model")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not written by scratchllm"):
            write_gguf(gpt, tok, theirs, overwrite=overwrite)
    assert theirs.read_bytes() == b"GGUF\x03\x00\x00\x00someone else's model"
    import gguf  # a real GGUF file, written by llama.cpp's tools rather than scratchllm

    real = tmp_path / "real.gguf"
    writer = gguf.GGUFWriter(real, "llama")
    writer.add_name("theirs")
    writer.add_tensor("token_embd.weight", torch.ones(4, 4).numpy())
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file,
                 writer.write_tensors_to_file, writer.close):
        step()
    before = real.read_bytes()
    with pytest.raises(ConfigError, match="not written by scratchllm"):
        write_gguf(gpt, tok, real, overwrite=True)
    assert real.read_bytes() == before
    with pytest.raises(ConfigError, match="is a folder"):
        write_gguf(gpt, tok, tmp_path)


def test_earlier_export_needs_overwrite(tmp_path, gpt, tok):
    path = write_gguf(gpt, tok, tmp_path / "m.gguf", type_name="f32")
    first = path.read_bytes()
    with pytest.raises(ConfigError, match="--overwrite"):
        write_gguf(gpt, tok, path, type_name="q8_0")
    assert path.read_bytes() == first
    write_gguf(gpt, tok, path, type_name="q8_0", overwrite=True)
    assert len(path.read_bytes()) < len(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_failure_mid_write_leaves_nothing(tmp_path, gpt, tok, monkeypatch):
    def broken(model, arch):
        yield "token_embd.weight", torch.zeros(3, 64)
        raise OSError("disk full")

    monkeypatch.setattr(gguf_export, "gguf_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(loaded_model(gpt, tok), tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, gpt, tok):
    from scratchllm.cli.main import main
    from scratchllm.weights.model_dir import save_model_dir

    model_dir = save_model_dir(tmp_path / "m", gpt, tokenizer=tok)
    for extra, message in [(["--to", "gguf", "--type", "q4_0"], "f32, f16, bf16, q8_0"),
                           (["--to", "gguf", "--shard-size", "1GB"], "--shard-size"),
                           (["--to", "hf", "--type", "q8_0"], "--type applies")]:
        out = tmp_path / "out.gguf"
        assert main(["export", str(model_dir), str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not out.exists()
    assert issubclass(ConfigError, ScratchLLMError)


def test_a_name_without_the_gguf_suffix_is_refused_before_any_work(tmp_path, gpt, tok):
    """llama.cpp's tools, Ollama's ``FROM`` and the README all name a GGUF ``*.gguf``; a bare
    ``out/sft`` was written as a suffix-less file where a folder was likely meant."""
    for name in ("sft", "sft.bin", "sft.v2"):
        with pytest.raises(ConfigError) as err:
            write_gguf(gpt, tok, tmp_path / name)
        assert f"{tmp_path / name}.gguf" in str(err.value) and "*.gguf" in str(err.value)
    assert not list(tmp_path.iterdir())
    assert write_gguf(gpt, tok, tmp_path / "Upper.GGUF").is_file()  # the suffix in any case
