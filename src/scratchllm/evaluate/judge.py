"""LLM-as-judge: a larger model scores each response from 0 to 100 (book 7.8).

The judge is any chat model behind an HTTP endpoint: Ollama (``POST /api/chat`` with
``"stream": false``, the book's choice with Llama 3) or any OpenAI-compatible server
(``POST /v1/chat/completions``: vLLM, llama.cpp's server, LM Studio, ...); the HTTP side is
``judge_client``. Up to ``workers`` items are judged at once, and each finished item is
appended to a JSONL file right away, so a run that dies at item 900 keeps the 899 before it
and ``resume=True`` asks the judge only about the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scratchllm.data.instruction import format_input
from scratchllm.errors import ConfigError, DataError
from scratchllm.evaluate.judge_client import (  # noqa: F401  (re-exported: the public names)
    APIS,
    DEFAULT_ENDPOINTS,
    JudgeClient,
    JudgeUnavailableError,
    run_sync,
)
from scratchllm.utils.atomic import atomic_write_json


def judge_prompt(entry: dict[str, Any], response_key: str = "model_response") -> str:
    """Ask for a single integer score of a response against the reference answer."""
    return (
        "You are grading an answer to a task.\n\n"
        f"Task:\n{format_input(entry)}\n\n"
        f"Reference answer:\n{entry['output']}\n\n"
        f"Answer to grade:\n{entry[response_key]}\n\n"
        "How good is the answer to grade, compared with the reference answer? Give a score "
        "from 0 (useless or wrong) to 100 (as good as the reference). "
        "Reply with the integer score only."
    )


_NUMBER = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?(?![\d])")


def parse_score(text: str) -> int | None:
    """The first number from 0 to 100 in the judge's reply ("Score: 85/100" -> 85), else None."""
    for match in _NUMBER.finditer(text or ""):
        value = int(match.group(1))
        if 0 <= value <= 100:
            return value
    return None


@dataclass
class JudgeResult:
    items: list[dict[str, Any]]
    scores: list[int | None] = field(default_factory=list)

    @property
    def average(self) -> float | None:
        valid = [s for s in self.scores if s is not None]
        return sum(valid) / len(valid) if valid else None

    @property
    def n_unparsed(self) -> int:
        return sum(s is None for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"average_score": self.average, "n_scored": len(self.scores) - self.n_unparsed,
                "n_unparsed": self.n_unparsed, "items": self.items}


def fingerprint(entry: dict[str, Any], client: JudgeClient, response_key: str) -> str:
    """What a stored score depends on: the entry, the judge, its settings and the prompt."""
    blob = json.dumps([entry, response_key, client.api, client.model, client.seed,
                       client.max_tokens, judge_prompt(entry, response_key)], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_item_file(path: Path, entries: Sequence[dict[str, Any]], client: JudgeClient,
                   response_key: str) -> dict[int, dict[str, Any]]:
    """The items an earlier run finished (a torn last line is skipped), checked against
    ``entries`` and the judge, so a resumed run never mixes in scores of something else."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            index = record["index"]
            stored = record["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the line a crash cut short
        if not isinstance(index, int) or not 0 <= index < len(entries) or \
                stored != fingerprint(entries[index], client, response_key):
            raise DataError(f"{path} line {number} was scored for another responses file or "
                            "another judge (model, API, settings); drop --resume to start over "
                            "or pass a different --out")
        done[index] = record
    return done


def _ours(path: Path, is_record: Callable[[Any], bool]) -> bool:
    """Whether ``path`` is absent, empty, or JSON that ``is_record`` recognises as the judge's
    (for JSONL, every line; a last line a crash cut short is allowed)."""
    if not path.exists():
        return True
    if not path.is_file():
        return False
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.strip():
        return True
    try:
        if path.suffix == ".jsonl":
            lines = text.split("\n")
            complete = lines[:-1] if not text.endswith("\n") else lines
            return all(is_record(json.loads(line)) for line in complete if line.strip())
        return is_record(json.loads(text))
    except ValueError:
        return False


def check_judge_outputs(*paths: str | os.PathLike) -> None:
    """Refuse, before any request, to replace a scores file (``.json``) or per-item log
    (``.jsonl``) that the judge did not write: never overwrite a user's file."""
    checks = {".jsonl": lambda r: isinstance(r, dict) and {"index", "fingerprint"} <= r.keys(),
              ".json": lambda r: isinstance(r, dict) and {"average_score", "items"} <= r.keys()}
    for path in map(Path, paths):
        is_record = checks.get(path.suffix, checks[".json"])
        if not _ours(path.expanduser(), is_record):
            raise ConfigError(f"{path} exists and was not written by scratchllm's judge; nothing "
                              "was changed: pass another --out (it writes OUT and OUT's .jsonl)")


class _ItemFile:
    """Append-only JSONL of finished items; each line is flushed to disk as it is written."""

    def __init__(self, path: Path | None, *, append: bool) -> None:
        self.handle: TextIO | None = None
        self.path, self.written = path, 0
        self.created = path is not None and not path.exists()  # removed again if left empty
        if path is not None:
            check_judge_outputs(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            torn = append and path.is_file() and path.stat().st_size and _last_byte(path) != b"\n"
            self.handle = open(path, "a" if append else "w", encoding="utf-8")
            if torn:
                self.handle.write("\n")  # end the line a crash cut short: the next one stands alone

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.written += 1

    def close(self) -> None:
        """Close; a file this run created and never wrote to (the judge was unreachable) goes."""
        if self.handle is not None:
            self.handle.close()
            if self.created and not self.written:
                self.path.unlink(missing_ok=True)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def judge_responses(entries: Sequence[dict[str, Any]], client: JudgeClient, *,
                    response_key: str = "model_response", workers: int = 1,
                    items_path: str | os.PathLike | None = None, resume: bool = False,
                    on_item: Callable[[int, int | None], None] | None = None) -> JudgeResult:
    """Score every entry; an unparseable reply gets score None and is left out of the average.

    ``workers`` requests run at once. With ``items_path`` each finished item is appended there
    as one JSON line (index, fingerprint, score, reply); ``resume=True`` keeps the items that
    file already holds and judges only the others. ``on_item(index, score)`` is called as each
    item finishes (in finishing order). If the judge fails for good, the finished items stay
    in ``items_path`` and the error is raised.
    """
    if not entries:
        raise DataError("no responses to judge")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    for index, entry in enumerate(entries):
        missing = [k for k in ("instruction", "output", response_key) if k not in entry]
        if missing:
            raise DataError(f"response entry {index} lacks {missing}; judge a file written by "
                            "`scratchllm finetune instruct` or pass --response-key")
    path = Path(items_path).expanduser() if items_path is not None else None
    done = read_item_file(path, entries, client, response_key) if path and resume else {}
    todo = [i for i in range(len(entries)) if i not in done]
    sink = _ItemFile(path, append=resume)
    try:
        if todo:
            run_sync(lambda: _judge_all(entries, todo, client, response_key, workers,
                                        sink, done, on_item))
    finally:
        sink.close()
    result = JudgeResult(items=[])
    for index, entry in enumerate(entries):
        score, reply = done[index]["score"], done[index]["judge_reply"]
        result.scores.append(score)
        result.items.append({**entry, "score": score, "judge_reply": reply})
    return result


async def _judge_all(entries: Sequence[dict[str, Any]], todo: list[int], client: JudgeClient,
                     response_key: str, workers: int, sink: _ItemFile,
                     done: dict[int, dict[str, Any]],
                     on_item: Callable[[int, int | None], None] | None) -> None:
    """``workers`` coroutines take the next index until none is left; the first error stops all."""
    queue: Iterator[int] = iter(todo)

    async def worker(http: Any) -> None:
        for index in queue:  # shared: each index goes to exactly one worker
            entry = entries[index]
            reply = await client.achat(http, judge_prompt(entry, response_key))
            record = {"index": index, "fingerprint": fingerprint(entry, client, response_key),
                      "score": parse_score(reply), "judge_reply": reply}
            sink.write(record)
            done[index] = record
            if on_item is not None:
                on_item(index, record["score"])

    async with client.session(workers) as http:
        tasks = [asyncio.create_task(worker(http)) for _ in range(min(workers, len(todo)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def save_judgement(path: str | Path, result: JudgeResult) -> Path:
    """Write per-item scores and the average as JSON, atomically."""
    path = Path(path).expanduser()
    check_judge_outputs(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result.to_dict())
    return path
