"""``prepare --overwrite`` killed (SIGKILL, power loss) at every step of writing its set.

The four files (train/val ``.bin`` and their sidecars) belong together, so whatever the moment
of the kill the folder must hold the complete old set or the complete new one, loadable by
pretrain's loader; and the next run cleans up and succeeds. The kill is real: a forked child
runs ``prepare_corpus`` and SIGKILLs itself just before its k-th file-system step (every file
sync, rename, delete and progress tick), for every k until a run completes.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from scratchllm.data import prepare_corpus
from scratchllm.train.batches import load_batches
from scratchllm.utils import atomic

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

OLD_DOCS = ["The old corpus, first file.\n" * 40, "Old second file, other words.\n" * 40,
            "Old third file.\n" * 60, "And an old fourth one.\n" * 50]
NEW_DOCS = ["A brand new text about cats.\n" * 50, "New dogs and birds.\n" * 70,
            "New third file here.\n" * 45, "Fourth new document.\n" * 55]
SET = ("train.bin", "val.bin", "train.json", "val.json")


def _docs(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i}.txt").write_text(doc)
    return folder


def _the_set(folder: Path) -> dict[str, bytes] | None:
    if not folder.is_dir():
        return None
    return {name: (folder / name).read_bytes() for name in SET if (folder / name).is_file()}


def _killed_run(src: Path, out: Path, tokenizer, kill_at: int, swap_fails: bool) -> int | None:
    """Run prepare in a child that SIGKILLs itself before its ``kill_at``-th step; returns
    the number of steps when it finished without reaching it, None when it was killed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count steps, die at the chosen one, never return to pytest
        try:
            os.close(read)
            steps = [0]

            def step() -> None:
                steps[0] += 1
                if steps[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            def counted(fn):
                def wrapper(*args, **kwargs):
                    step()
                    return fn(*args, **kwargs)
                return wrapper

            os.fsync, os.replace, os.unlink = (counted(os.fsync), counted(os.replace),
                                               counted(os.unlink))
            shutil.rmtree = counted(shutil.rmtree)
            exchange = (lambda a, b: False) if swap_fails else atomic.exchange_paths
            atomic.exchange_paths = counted(exchange)
            prepare_corpus([src], out, tokenizer=tokenizer, val_fraction=0.3, workers=1,
                           overwrite=True, progress=lambda p: step())
            os.write(write, str(steps[0]).encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - report through the exit code, not pytest
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        told = pipe.read()
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return None
    assert os.WEXITSTATUS(status) == 0, "the child's prepare_corpus failed (see stderr)"
    return int(told)


def _loads(folder: Path, tokenizer) -> None:
    train, val, spec = load_batches(str(folder), tokenizer, context_length=8, stride=8,
                                    batch_size=2, train_ratio=0.9, seed=0)
    assert spec is not None and len(val) > 0 and train.next_batch()[0].shape == (2, 8)


@pytest.mark.parametrize("swap_fails", [False, True], ids=["one-step-swap", "two-renames"])
def test_a_kill_at_any_step_leaves_the_old_set_or_the_new_one(tmp_path, swap_fails):
    from scratchllm.tokenizers import get_tokenizer

    tokenizer = get_tokenizer("gpt2")
    old_src, new_src = _docs(tmp_path / "old", OLD_DOCS), _docs(tmp_path / "new", NEW_DOCS)
    template, reference = tmp_path / "template", tmp_path / "reference"
    prepare_corpus([old_src], template, tokenizer=tokenizer, val_fraction=0.3, workers=1)
    prepare_corpus([new_src], reference, tokenizer=tokenizer, val_fraction=0.3, workers=1)
    old_set, new_set = _the_set(template), _the_set(reference)
    assert len(old_set) == len(new_set) == 4 and old_set != new_set

    outcomes = []
    for k in range(1, 200):
        out = tmp_path / f"k{k}" / "tokens"
        shutil.copytree(template, out)
        total = _killed_run(new_src, out, tokenizer, k, swap_fails)
        if total is not None:  # the run got through: every step has been tried
            assert _the_set(out) == new_set and k > total
            break
        if swap_fails:  # two renames leave a moment with no folder: the next write's
            atomic.remove_dead_temps(out)  # first step puts the old one back
        found = _the_set(out)
        which = {n: "old" if b == old_set.get(n) else "new" if b == new_set.get(n) else "?"
                 for n, b in (found or {}).items()}
        assert found in (old_set, new_set), f"killed before step {k}: a mixed set {which}"
        outcomes.append("old" if found == old_set else "new")
        _loads(out, tokenizer)
        prepare_corpus([new_src], out, tokenizer=tokenizer, val_fraction=0.3, workers=1,
                       overwrite=True)  # the rerun cleans up and succeeds
        assert _the_set(out) == new_set
        assert [p.name for p in out.parent.iterdir()] == ["tokens"]  # no temp left beside
        assert sorted(p.name for p in out.iterdir()) == sorted((".scratchllm", *SET))
    else:
        pytest.fail("the run never finished")
    assert outcomes[0] == "old" and outcomes[-1] == "new" and len(outcomes) >= 8
