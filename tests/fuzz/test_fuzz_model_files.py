"""Malformed model files are refused by name, and nothing outside the model directory is read.

A scratchllm model directory and a Hugging Face one (built with ``transformers``) are copied
and damaged: config.json that is not JSON, not an object, or holds wrong types and negative
sizes; safetensors files with random bytes, oversized header lengths, non-object headers,
out-of-range offsets, unknown or non-float dtypes; ``model.safetensors.index.json`` files
that are damaged, map to non-strings, or name shards with ``..``, absolute paths, path
separators or symlinks leading out of the directory. ``scratchllm.load`` must raise a
CheckpointError naming the file (and the shard), and the CLI must print one line.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import shutil
import struct
from pathlib import Path
from unittest import mock

import pytest
import safetensors.torch
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import scratchllm
import scratchllm.weights.hf as hf_loader
from scratchllm.cli.main import main
from scratchllm.errors import CheckpointError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import BPETokenizer
from scratchllm.weights.model_dir import save_model_dir

_counter = itertools.count()
VOCAB = 300


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_models")


@pytest.fixture(scope="module")
def scratch_dir(root) -> Path:
    """A tiny GPT saved as a scratchllm model directory, with a BPE tokenizer."""
    tokenizer = BPETokenizer.train("hello world, hello model files " * 20, VOCAB)
    config = GPTConfig(vocab_size=VOCAB, context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    return save_model_dir(root / "scratch", GPTModel(config), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def hf_dir(root) -> Path:
    """A 1-layer GPT-2 written by transformers' own save_pretrained (safetensors)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB,
                                     n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(root / "hf")
    assert (root / "hf" / "model.safetensors").is_file()
    return root / "hf"


@pytest.fixture(scope="module")
def sharded_dir(root, hf_dir) -> Path:
    """The same GPT-2 split into two shards with an index, as big checkpoints come."""
    out = root / "hf-sharded"
    out.mkdir()
    shutil.copy(hf_dir / "config.json", out / "config.json")
    tensors = safetensors.torch.load_file(str(hf_dir / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, members in shards.items():
        safetensors.torch.save_file({n: tensors[n].contiguous() for n in members},
                                    str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    return out


def fresh_copy(source: Path) -> Path:
    target = source.parent / "examples" / f"{source.name}-{next(_counter)}"
    shutil.copytree(source, target, symlinks=True)
    return target


def test_fixtures_load(scratch_dir, hf_dir, sharded_dir):
    """The undamaged directories load, so every refusal below is caused by the damage."""
    for directory in (scratch_dir, hf_dir, sharded_dir):
        model, _ = scratchllm.load(directory)
        assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, VOCAB)


def run_cli(argv: list[object]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def assert_refused(directory: Path, *culprits: object) -> str:
    """scratchllm.load raises CheckpointError naming one of ``culprits``; returns the message."""
    with pytest.raises(CheckpointError) as caught:
        scratchllm.load(directory)
    message = str(caught.value)
    assert any(str(c) in message for c in culprits), (culprits, message)
    return message


# ---------------------------------------------------------------------------- safetensors bytes
def safetensors_bytes(header: object, data: bytes = b"", declared: int | None = None) -> bytes:
    """A safetensors file by hand: u64 header length, JSON header, raw data."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(blob) if declared is None else declared
    return struct.pack("<Q", length) + blob + data


def json_values(max_leaves: int = 6):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                        st.floats(allow_nan=False), st.text(max_size=6))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=max_leaves)


tensor_entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F8_E4M3"]),
                       st.text(max_size=5)),
    "shape": st.lists(st.integers(-2, 40), max_size=3),
    "data_offsets": st.lists(st.integers(-5, 10**12), min_size=0, max_size=3),
})
bad_safetensors = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=64).map(lambda b: safetensors_bytes(b)),                   # not JSON
    json_values().map(lambda v: safetensors_bytes(v)),                          # not an object
    st.integers(10**6, 2**64 - 1).map(lambda n: safetensors_bytes({}, declared=n)),  # too long
    st.dictionaries(st.text(min_size=1, max_size=8), tensor_entry, min_size=1, max_size=3).flatmap(
        lambda header: st.binary(max_size=64).map(lambda data: safetensors_bytes(header, data))),
)


@settings(max_examples=60)
@given(content=bad_safetensors)
@example(content=safetensors_bytes({"tok_emb.weight": {"dtype": "F32", "shape": [300, 16],
                                                      "data_offsets": [0, 19200]}}))
@example(content=safetensors_bytes({"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}},
                                   b"\0" * 4))
@example(content=safetensors_bytes({}, declared=2**63))
def test_damaged_scratchllm_weights_are_named(scratch_dir, content):
    directory = fresh_copy(scratch_dir)
    (directory / "model.safetensors").write_bytes(content)
    assert_refused(directory, directory / "model.safetensors")


def test_integer_weights_of_the_right_shapes_are_refused(scratch_dir):
    """Tensors of the right names and shapes but an integer dtype would crash inside torch
    at the first matmul; the loader refuses them by name instead."""
    directory = fresh_copy(scratch_dir)
    path = directory / "model.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    tensors["trf_blocks.0.ff.fc1.weight"] = tensors["trf_blocks.0.ff.fc1.weight"].long()
    safetensors.torch.save_file(tensors, str(path))
    message = assert_refused(directory, path)
    assert "trf_blocks.0.ff.fc1.weight" in message
    code, err = run_cli(["generate", "--model", directory, "hello", "--max-new-tokens", "2"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


@settings(max_examples=40)
@given(content=bad_safetensors)
def test_damaged_hf_weights_are_named(hf_dir, content):
    directory = fresh_copy(hf_dir)
    (directory / "model.safetensors").write_bytes(content)
    assert_refused(directory, directory / "model.safetensors")


# ---------------------------------------------------------------------------- config.json
def _scratch_header(scratch_dir: Path) -> dict:
    return json.loads((scratch_dir / "config.json").read_text())


config_fields = ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate",
                 "qkv_bias", "tie_weights"]
bad_config_value = st.one_of(st.integers(-3, 0), st.floats(allow_nan=False), st.text(max_size=4),
                             st.none(), st.lists(st.integers(), max_size=2), st.booleans())


@settings(max_examples=80)
@given(data=st.data())
@example(data=None)
def test_damaged_scratchllm_config_is_named(scratch_dir, data):
    header = _scratch_header(scratch_dir)
    if data is None:  # an explicit case: a negative size
        content = json.dumps({**header, "config": {**header["config"], "emb_dim": -16}}).encode()
    else:
        content = data.draw(st.one_of(
            st.binary(max_size=200),
            json_values().map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries({"field": st.sampled_from(config_fields),
                                   "value": bad_config_value}).map(
                lambda c: json.dumps({**header, "config": {**header["config"],
                                                           c["field"]: c["value"]}}).encode()),
            st.sampled_from(["format", "format_version", "family", "config", "tokenizer"]).flatmap(
                lambda key: json_values().map(
                    lambda v: json.dumps({**header, key: v}).encode())),
        ), label="config.json")
    directory = fresh_copy(scratch_dir)
    (directory / "config.json").write_bytes(content)
    try:
        scratchllm.load(directory)
    except CheckpointError as err:
        assert str(directory / "config.json") in str(err) or \
            str(directory / "model.safetensors") in str(err), str(err)
    except MissingFileError as err:  # config.json that is no model config of either kind
        pytest.fail(f"damaged config.json reported as a missing file: {err}")
    # else: the damage left a loadable model (e.g. drop_rate 0.5, a different tokenizer)


@pytest.mark.parametrize("change, culprit", [
    ({"family": "mamba"}, "'mamba'"),
    ({"config": {"vocab_size": -1}}, "vocab_size"),
    ({"config": []}, "config"),
    ({"tokenizer": {"type": "hf", "tokenizer_file": "../../outside/tokenizer.json"}},
     "../../outside/tokenizer.json"),
    ({"tokenizer": {"type": "hf", "tokenizer_file": "/etc/passwd"}}, "/etc/passwd"),
])
def test_cli_names_the_damaged_config(scratch_dir, change, culprit):
    directory = fresh_copy(scratch_dir)
    header = _scratch_header(scratch_dir)
    if "config" in change and isinstance(change["config"], dict):
        change = {"config": {**header["config"], **change["config"]}}
    (directory / "config.json").write_text(json.dumps({**header, **change}))
    code, err = run_cli(["generate", "--model", directory, "hello", "--max-new-tokens", "2"])
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert str(directory / "config.json") in err and culprit in err, err


@settings(max_examples=60)
@given(field=st.sampled_from(["n_layer", "n_embd", "n_head", "vocab_size", "n_positions",
                              "layer_norm_epsilon", "tie_word_embeddings", "model_type"]),
       value=st.one_of(bad_config_value, json_values()))
@example(field="n_embd", value=-32)
@example(field="n_head", value=3)  # 32 is not divisible by 3
@example(field="n_embd", value=39748)  # would allocate 25 GB before any shape check
def test_damaged_hf_config_is_named(hf_dir, field, value):
    directory = fresh_copy(hf_dir)
    config = json.loads((directory / "config.json").read_text())
    config[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    try:
        scratchllm.load(directory)
    except CheckpointError as err:
        assert str(directory / "config.json") in str(err) or \
            str(directory / "model.safetensors") in str(err), str(err)


# ---------------------------------------------------------------------------- shard index
@pytest.fixture(scope="module")
def outside(root) -> Path:
    """A file outside every model directory that the loader must never open."""
    path = root / "outside.safetensors"
    safetensors.torch.save_file({"secret": torch.zeros(1)}, str(path))
    return path


@contextlib.contextmanager
def no_reads_outside(directory: Path):
    """Fail the test if any safetensors file outside ``directory`` is opened."""
    real_open = hf_loader.safe_open
    inside = directory.resolve()
    escaped: list[Path] = []  # recorded, not raised: the loader would wrap an exception

    def guarded(path, *args, **kwargs):
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(inside):
            escaped.append(resolved)
        return real_open(path, *args, **kwargs)

    with mock.patch.object(hf_loader, "safe_open", guarded):
        yield
    assert not escaped, f"opened {escaped}, outside {inside}"


def bad_shard_names(outside: Path):
    return st.one_of(
        st.sampled_from(["..", ".", "", "../outside.safetensors",
                         "../../outside.safetensors", str(outside), "/etc/passwd", "sub/x.safetensors",
                         "sub\\x.safetensors", "./model-00001-of-00002.safetensors",
                         "model-00001-of-00002.safetensors/..", "C:\\x.safetensors", "\x00"]),
        st.tuples(st.text(max_size=4), st.sampled_from(["/", "\\", "/../"]),
                  st.text(max_size=4)).map("".join),
    )


@settings(max_examples=60)
@given(data=st.data())
def test_index_shard_names_that_leave_the_directory_are_refused(sharded_dir, outside, data):
    directory = fresh_copy(sharded_dir)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    bad = data.draw(bad_shard_names(outside), label="shard name")
    victim = data.draw(st.sampled_from(sorted(index["weight_map"])), label="tensor")
    index["weight_map"][victim] = bad
    index_path.write_text(json.dumps(index))
    with no_reads_outside(directory):
        message = assert_refused(directory, index_path)
    assert repr(bad) in message or bad in message, message


def test_index_symlink_out_of_the_directory_is_refused(sharded_dir, outside):
    directory = fresh_copy(sharded_dir)
    shard = directory / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(outside)
    with no_reads_outside(directory):
        message = assert_refused(directory, directory / "model.safetensors.index.json")
    assert "model-00002-of-00002.safetensors" in message
    code, err = run_cli(["generate", "--model", directory, "hi", "--max-new-tokens", "1"])
    assert code == 2 and err.count("\n") == 1 and "model-00002-of-00002" in err, err


def test_index_symlink_inside_the_directory_loads(sharded_dir):
    """Links that stay inside (or reach the Hugging Face cache's blobs/ folder) are fine."""
    directory = fresh_copy(sharded_dir)
    shard = directory / "model-00002-of-00002.safetensors"
    (directory / "store").mkdir()
    shard.rename(directory / "store" / "blob")
    shard.symlink_to(Path("store") / "blob")
    model, _ = scratchllm.load(directory)
    assert model.config.n_layers == 1


def test_hub_cache_layout_with_blob_symlinks_loads(sharded_dir, root):
    """huggingface_hub keeps files in blobs/ and links snapshots/<rev>/NAME to ../../blobs/."""
    repo = root / "examples" / f"models--x--tiny-{next(_counter)}"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for file in sharded_dir.iterdir():
        blob = repo / "blobs" / f"hash-{file.name}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    model, _ = scratchllm.load(snapshot)
    assert model.config.n_layers == 1


@settings(max_examples=60)
@given(content=st.one_of(
    st.binary(max_size=200),
    json_values().map(lambda v: json.dumps(v).encode()),
    json_values().map(lambda v: json.dumps({"weight_map": v}).encode()),
    st.dictionaries(st.text(max_size=5), json_values(2), min_size=1, max_size=3).map(
        lambda m: json.dumps({"weight_map": m}).encode()),
    st.just(b"[" * 50_000),
    st.just(b'{"weight_map": {"a": ' + b"9" * 5000 + b"}}"),
))
@example(content=b'{"weight_map": ["model.safetensors"]}')
@example(content=b'{"weight_map": {"transformer.wte.weight": 7}}')
@example(content=b'{"weight_map": {}}')
def test_damaged_index_is_named(sharded_dir, content):
    directory = fresh_copy(sharded_dir)
    index_path = directory / "model.safetensors.index.json"
    index_path.write_bytes(content)
    with no_reads_outside(directory):
        try:
            scratchllm.load(directory)
        except CheckpointError as err:
            assert str(index_path) in str(err) or "safetensors" in str(err), str(err)
        except MissingFileError as err:  # well-formed names of shards that are not there
            assert str(index_path) in str(err), str(err)
