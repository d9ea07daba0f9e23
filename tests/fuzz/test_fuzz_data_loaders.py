"""Data and config files full of garbage get one clear line and exit code 2, never a traceback.

Every reader a user points at a file (pretraining text, `scratchllm prepare` inputs, token
sidecars, classification TSV/CSV/JSONL, instruction and preference JSON, training configs)
is fed random bytes, broken UTF-8, UTF-16, NUL-laden "text", empty files, deeply nested or
huge-number JSON and well-formed files of the wrong shape. Properties drive the CLI in
process (``scratchllm.cli.main.main``); a few cases run the real ``python -m scratchllm``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scratchllm.cli.main import main
from scratchllm.errors import ConfigError
from scratchllm.train.config import TrainConfig, read_config_file

REPO_ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_data")


def write(directory: Path, suffix: str, content: bytes, stem: str = "input") -> Path:
    """A fresh file per example, so no example sees another's leftovers."""
    path = directory / f"{stem}-{next(_counter)}{suffix}"
    path.write_bytes(content)
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``scratchllm ARGV`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def assert_one_line_error(code: int, stderr: str, *names: object) -> None:
    """Exit 2 and a single line on stderr naming one of ``names`` (the file(s) at fault)."""
    assert "Traceback" not in stderr
    assert code == 2, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, stderr
    assert lines[0].startswith("scratchllm ") and ": error: " in lines[0], stderr
    assert any(str(name) in lines[0] for name in names), (names, stderr)


# ---------------------------------------------------------------------------- garbage
def is_text(data: bytes) -> bool:
    """What the text readers accept: non-empty UTF-8 without NUL bytes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(data) and b"\x00" not in data


short_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
broken_utf8 = st.tuples(short_text, st.sampled_from(
    [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x9f\x99", b"\x80", b"\xfe\xfe"]), short_text,
).map(lambda t: t[0].encode() + t[1] + t[2].encode())
utf16 = st.tuples(short_text, st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"])).map(
    lambda t: t[0].encode(t[1]))
garbage = st.one_of(
    st.binary(max_size=600),
    broken_utf8,
    utf16,
    st.just(b""),
    st.binary(min_size=1, max_size=8).map(lambda b: b + b"\x00" * 64),  # a binary header
    st.sampled_from([b"[" * 50_000, b'{"a":' * 50_000, b"[" + b"9" * 5000 + b"]",
                     b"\xef\xbb\xbf", b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"\x89PNG\r\n\x1a\n"]),
)
bad_text = garbage.filter(lambda b: not is_text(b))


def json_values(max_leaves: int = 8):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=max_leaves)


# ---------------------------------------------------------------------------- text corpora
@given(content=bad_text, suffix=st.sampled_from([".txt", ".md", ".json", ""]))
@example(content="é".encode("latin-1") * 3, suffix=".txt")
@example(content="Hello world".encode("utf-16-le"), suffix=".txt")  # valid UTF-8 with NULs
@example(content=b"  \n\t ", suffix=".txt")  # whitespace only
@example(content=b"short text", suffix=".txt")  # too few tokens for one window
def test_pretrain_refuses_bad_text_files(workdir, content, suffix):
    data = write(workdir, suffix, content)
    code, err = run_cli(["pretrain", "--data", data, "--out", workdir / "run", "--overwrite"])
    assert_one_line_error(code, err, data)


@settings(max_examples=50)
@given(content=bad_text)
@example(content="Hello world".encode("utf-16-le"))
def test_prepare_refuses_bad_text_files(workdir, content):
    data = write(workdir, ".txt", content)
    out = workdir / f"prepared-{next(_counter)}"
    code, err = run_cli(["prepare", data, "--out", out, "--workers", "1"])
    assert_one_line_error(code, err, data)
    assert not (out / "train.bin").exists()


@settings(max_examples=50)
@given(sidecar=st.one_of(garbage, json_values().map(lambda v: json.dumps(v).encode())))
@example(sidecar=b'{"format": "scratchllm.tokens", "dtype": "uint16", "num_tokens": 1e400}')
def test_pretrain_refuses_damaged_token_sidecars(workdir, sidecar):
    folder = workdir / f"tokens-{next(_counter)}"
    folder.mkdir()
    for split in ("train", "val"):
        (folder / f"{split}.bin").write_bytes(b"\x01\x00" * 300)
        (folder / f"{split}.json").write_bytes(sidecar)
    code, err = run_cli(["pretrain", "--data", folder, "--out", workdir / "run", "--overwrite"])
    assert_one_line_error(code, err, folder / "train.json", folder / "val.json",
                          folder / "train.bin")


def test_huge_text_file_is_refused_before_reading(workdir):
    """A sparse 64 GiB file costs no disk; reading it whole would exhaust memory."""
    huge = workdir / "huge.txt"
    with open(huge, "wb") as handle:
        handle.truncate(64 << 30)
    code, err = run_cli(["pretrain", "--data", huge, "--out", workdir / "run"])
    assert_one_line_error(code, err, huge)
    assert "scratchllm prepare" in err  # the streaming path for big corpora
    # prepare streams it piece by piece and stops at the first NUL byte it meets.
    code, err = run_cli(["prepare", huge, "--out", workdir / "huge-out", "--workers", "1"])
    assert_one_line_error(code, err, huge)


# ---------------------------------------------------------------------------- fine-tuning data
MISSING_MODEL = "no-such-model-dir"


@settings(max_examples=60)
@given(content=st.one_of(garbage, json_values().map(lambda v: json.dumps(v).encode()),
                         json_values().map(lambda v: (json.dumps(v) + "\n").encode() * 3)),
       suffix=st.sampled_from([".tsv", ".csv", ".jsonl", ".json", ".txt"]))
@example(content=b'text,label\n"' + b"x" * 200_000 + b'",spam\n', suffix=".csv")
@example(content=b'"' + b"x" * 200_000 + b'\n', suffix=".tsv")
@example(content=b'{"text": "hi", "label": ' + b"9" * 5000 + b"}\n", suffix=".jsonl")
@example(content=b"[" * 50_000 + b"\n", suffix=".jsonl")
def test_classification_data_garbage(workdir, content, suffix):
    data = write(workdir, suffix, content)
    code, err = run_cli(["finetune", "classify", "--model", MISSING_MODEL, "--data", data,
                         "--out", workdir / f"clf-{next(_counter)}"])
    # Data is read first; data that happens to be well-formed fails on the missing model.
    assert_one_line_error(code, err, data, MISSING_MODEL)


entry = st.dictionaries(st.sampled_from(["instruction", "input", "output", "chosen",
                                         "rejected", "x"]), json_values(4), max_size=5)


@settings(max_examples=60)
@given(content=st.one_of(garbage, json_values().map(lambda v: json.dumps(v).encode()),
                         st.lists(entry, max_size=3).map(lambda v: json.dumps(v).encode())),
       method=st.sampled_from(["instruct", "dpo"]))
@example(content=b"[" * 50_000, method="instruct")
@example(content=b"[" + b"9" * 5000 + b"]", method="dpo")
@example(content='[{"instruction": "a", "input": "", "output": "b"}]'.encode("utf-16"),
         method="instruct")
def test_instruction_and_preference_json_garbage(workdir, content, method):
    data = write(workdir, ".json", content)
    code, err = run_cli(["finetune", method, "--model", MISSING_MODEL, "--data", data,
                         "--out", workdir / f"ft-{next(_counter)}"])
    assert_one_line_error(code, err, data, MISSING_MODEL)


# ---------------------------------------------------------------------------- configs
CONFIG_KEYS = [f.name for f in TrainConfig.__dataclass_fields__.values()]
config_dicts = st.dictionaries(
    st.one_of(st.sampled_from(CONFIG_KEYS + ["model"]), st.text(max_size=6)),
    st.one_of(json_values(4), st.dictionaries(st.one_of(st.text(max_size=8),
                                                        st.sampled_from(["n_layers", "emb_dim"])),
                                              json_values(2), max_size=3)),
    max_size=4)


@given(values=config_dicts)
@example(values={"model": {"n_layers": -1}})
@example(values={"lr": [1]})
@example(values={"betas": "ab"})
@example(values={"context_length": 1e400})
def test_train_config_from_any_mapping_is_valid_or_config_error(values):
    """Whatever a YAML/TOML/JSON file holds, TrainConfig accepts it or raises ConfigError."""
    try:
        TrainConfig.from_dict(values)
    except ConfigError:
        pass


@settings(max_examples=60)
@given(content=st.one_of(
           garbage,
           st.sampled_from([b"1: 2\nlr: 3\n", b"? [a]\n: 1\n", b"model: {1: 2}\n",
                            b"!!python/object/apply:os.system ['true']\n", b"- 1\n- 2\n",
                            b"a = [1, \n", b"lr = 1979-05-27\n", b"model = {n_layers = -3}\n",
                            b"&a [*a]\n", b"lr: .inf\n", b"betas: [1, 2, 3]\n"]),
           config_dicts.map(lambda v: json.dumps(v).encode())),
       suffix=st.sampled_from([".yaml", ".yml", ".toml", ".json", ".cfg"]))
@example(content="lr: 0.1\n".encode("utf-16"), suffix=".yaml")
@example(content=b"\xff\xfe\x00", suffix=".toml")
def test_pretrain_config_garbage(workdir, content, suffix):
    config = write(workdir, suffix, content, stem="config")
    empty_data = write(workdir, ".txt", b"")  # a config that parses fails on the data instead
    code, err = run_cli(["pretrain", "--config", config, "--data", empty_data,
                         "--out", workdir / "run", "--overwrite"])
    assert_one_line_error(code, err, config, empty_data)


@given(content=garbage, suffix=st.sampled_from([".yaml", ".toml", ".json"]))
def test_read_config_file_gives_a_mapping_or_names_the_file(workdir, content, suffix):
    path = write(workdir, suffix, content, stem="config")
    try:
        values = read_config_file(path)
    except ConfigError as err:
        assert str(path) in str(err)
    else:  # YAML reads much garbage as a plain string or an empty document
        assert isinstance(values, dict)


# ---------------------------------------------------------------------------- real processes
def start_cli(argv: list[object], cwd: Path) -> subprocess.Popen:
    """``python -m scratchllm ARGV`` in a fresh interpreter (started now, awaited later)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "scratchllm", *map(str, argv)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_real_processes_print_one_line_and_exit_2(tmp_path):
    """The same refusals through a real `python -m scratchllm`: stderr is one line, exit 2.
    The processes run side by side: each spends most of its time importing torch."""
    random_txt = tmp_path / "random.txt"
    random_txt.write_bytes(bytes(range(256)) * 4)
    nested = tmp_path / "nested.json"
    nested.write_bytes(b"[" * 100_000)
    binary_yaml = tmp_path / "config.yaml"
    binary_yaml.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    cases = [
        (["pretrain", "--data", random_txt, "--out", tmp_path / "run"], random_txt),
        (["finetune", "instruct", "--model", tmp_path, "--data", nested, "--out",
          tmp_path / "ft"], nested),
        (["pretrain", "--config", binary_yaml], binary_yaml),
    ]
    running = [(start_cli(argv, tmp_path), culprit) for argv, culprit in cases]
    for process, culprit in running:
        stdout, stderr = process.communicate(timeout=180)
        assert_one_line_error(process.returncode, stderr, culprit)
        assert stdout == ""
