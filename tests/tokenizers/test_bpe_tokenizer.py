"""BPETokenizer: lossless round trips, save/load, and clear errors for bad input (book 2.5)."""

from __future__ import annotations

import json
import random

import pytest

from scratchllm.errors import MissingFileError, TokenizerError
from scratchllm.tokenizers import BPETokenizer, get_tokenizer, tokenizer_from_dict


@pytest.fixture(scope="module")
def trained(shared_data) -> BPETokenizer:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    return BPETokenizer.train(text, vocab_size=600)


def test_round_trip_any_unicode(trained):
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(
            chr(cp) for cp in (rng.randint(0, 0x10FFFF) for _ in range(rng.randint(0, 40)))
            if not 0xD800 <= cp <= 0xDFFF
        )
        assert trained.decode(trained.encode(text)) == text


def test_lone_surrogate_becomes_replacement_char(trained):
    # Like tiktoken: a lone surrogate cannot be UTF-8, so it is encoded as U+FFFD.
    assert trained.decode(trained.encode("a\ud800b")) == "a\ufffdb"


def test_save_load_round_trip(tmp_path, trained, shared_data):
    path = trained.save(tmp_path / "sub" / "tok.json")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp files left behind
    loaded = BPETokenizer.load(path)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.to_dict() == trained.to_dict()
    assert get_tokenizer(path).encode("Gisburn") == trained.encode("Gisburn")
    assert tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8"))).merges == trained.merges


def test_save_overwrites_atomically(tmp_path, trained):
    path = tmp_path / "tok.json"
    path.write_text("old contents")
    trained.save(path)
    assert BPETokenizer.load(path).vocab == trained.vocab


def test_load_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nothere.json"):
        BPETokenizer.load(tmp_path / "nothere.json")


@pytest.mark.parametrize(
    "contents, match",
    [
        ('{"vocab": {', "corrupted"),
        ('[1, 2, 3]', "not a scratchllm BPE tokenizer"),
        ('{"format": "scratchllm-bpe", "vocab": {"a": 0}}', "invalid"),
    ],
)
def test_load_corrupted_file_names_it(tmp_path, contents, match):
    path = tmp_path / "broken.json"
    path.write_text(contents, encoding="utf-8")
    with pytest.raises(TokenizerError, match=match) as info:
        BPETokenizer.load(path)
    assert "broken.json" in str(info.value)


def test_inconsistent_vocab_is_rejected(trained):
    spec = trained.to_dict()
    spec["merges"].append(["Ġthe", "zzz-not-a-token"])
    with pytest.raises(TokenizerError, match="missing from vocab"):
        tokenizer_from_dict(spec)
    spec = trained.to_dict()
    spec["special_tokens"] = {"<|endoftext|>": 5}  # collides with a byte token id
    with pytest.raises(TokenizerError, match="no gaps or repeats"):
        tokenizer_from_dict(spec)


def test_decode_rejects_unknown_ids(trained):
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        trained.decode([1, 600])
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        trained.decode([-1])


def test_decode_accepts_tensors(trained):
    torch = pytest.importorskip("torch")
    ids = trained.encode("the picture")
    assert trained.decode(torch.tensor(ids)) == "the picture"
    with pytest.raises(TokenizerError, match="one sequence"):
        trained.decode(torch.tensor([ids, ids]))


def test_special_token_refusal(trained):
    text = "one<|endoftext|>two"
    with pytest.raises(TokenizerError, match="allowed_special"):
        trained.encode(text)
    with pytest.raises(TokenizerError, match="allowed_special"):
        trained.encode(text, allowed_special=set())
    ids = trained.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(trained.eot_id) == 1
    assert trained.eot_id not in trained.encode_ordinary(text)
    assert trained.decode(trained.encode_ordinary(text)) == text


def test_save_that_crashes_keeps_the_old_file(tmp_path, trained, monkeypatch):
    path = tmp_path / "tok.json"
    path.write_text("old contents")

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", crash)  # dies at the last step of the atomic write
    with pytest.raises(OSError, match="disk gone"):
        trained.save(path)
    assert path.read_text() == "old contents"
