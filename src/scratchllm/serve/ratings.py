"""Human ratings from the page's compare tab, kept as preference data (book 8.7 and 8.3).

A rating is one prompt, two answers and a verdict: A, B or a tie. A decided rating becomes
an entry of the book's preference format, ``{"instruction", "input", "chosen",
"rejected"}`` plus who produced each answer and when, appended to a JSON list that
``scratchllm finetune dpo --data FILE`` reads as it is. A tie has no chosen answer, so it
must never reach DPO as a pair: ties go to a sibling file, ``NAME.ties.json`` beside
``NAME.json``, with ``answer_a``/``answer_b`` instead of ``chosen``/``rejected``. Both files
count in the win rates.

Every append rewrites the whole file atomically (``utils.atomic``) under a lock (a thread
lock, and on POSIX an ``flock`` on the folder, so two servers on one file do not lose each
other's rows). A file that exists must already be such a list; anything else is refused and
left as it was. The default lives in ``runs/ratings/``, a folder scratchllm marks as its own.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from scratchllm.errors import ConfigError
from scratchllm.utils.atomic import atomic_write_json
from scratchllm.utils.json_files import describe_json_error
from scratchllm.serve.errors import bad_param
from scratchllm.utils.outputs import OutputKind, check_output_dir, prepare_output_dir

DEFAULT_RATINGS = Path("runs") / "ratings" / "preferences.json"
RATINGS_KIND = OutputKind("ratings", ("preferences.json", "preferences.ties.json"))
PAIR_KEYS = ("instruction", "input", "chosen", "rejected")
TIE_KEYS = ("instruction", "input", "answer_a", "answer_b")
MAX_TEXT = 100_000  # characters of a prompt or an answer
MAX_LABEL = 200


class RatingsError(ConfigError):
    """The ratings file cannot be used (the message names it and says what to do)."""


def ties_path(path: Path) -> Path:
    """``preferences.json`` -> ``preferences.ties.json`` (a name without suffix gets one)."""
    suffix = path.suffix or ".json"
    return path.with_name(f"{path.stem if path.suffix else path.name}.ties{suffix}")


def _read_list(path: Path, keys: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """The JSON list of ``what`` records in ``path`` ([] when it does not exist)."""
    if not path.exists():
        return []
    fix = (f"pass --ratings with a new file name, or move {path.name} away; scratchllm never "
           "overwrites a file that is not its own")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise RatingsError(f"{path} exists but is not readable JSON "
                           f"({describe_json_error(err)}); {fix}") from None
    if not isinstance(value, list):
        raise RatingsError(f"{path} exists and holds a JSON {type(value).__name__}, not a list "
                           f"of {what}s; {fix}")
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys):
            raise RatingsError(f"{path}: entry {index} is not a {what} (an object with string "
                               f"fields {', '.join(keys)}); {fix}")
    return value


class RatingsFile:
    """Where ratings go: ``path`` (decided pairs) and ``ties_path(path)`` (ties).

    Construction checks both files without changing anything, so ``scratchllm serve``
    refuses a wrong ``--ratings`` before it starts listening.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.owned = path is None  # the default folder is claimed (marked) on first write
        self.path = Path(DEFAULT_RATINGS if path is None else path).expanduser().absolute()
        self.ties = ties_path(self.path)
        if self.path.is_dir():
            raise RatingsError(f"--ratings {self.path} is a folder; name a .json file")
        above = next((p for p in self.path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RatingsError(f"--ratings {self.path}: {above} is a file, not a folder; "
                               "choose another path")
        if self.owned:
            check_output_dir(self.path.parent, RATINGS_KIND, resume=True,
                             what="the ratings folder")
        self._lock = threading.Lock()
        self.pairs()
        self.tie_records()

    def pairs(self) -> list[dict[str, Any]]:
        return _read_list(self.path, PAIR_KEYS, "preference record")

    def tie_records(self) -> list[dict[str, Any]]:
        return _read_list(self.ties, TIE_KEYS, "tie record")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.owned:
                prepare_output_dir(self.path.parent, RATINGS_KIND, resume=True,
                                   what="the ratings folder")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                import fcntl
            except ImportError:  # Windows: the thread lock alone
                yield
                return
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def add(self, rating: dict[str, Any]) -> dict[str, Any]:
        """Append one checked rating (``parse_rating``); return the record written."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        base = {"instruction": rating["prompt"], "input": rating["input"]}
        if rating["winner"] == "tie":
            record = {**base, "answer_a": rating["answer_a"], "answer_b": rating["answer_b"],
                      "model_a": rating["model_a"], "model_b": rating["model_b"],
                      "settings_a": rating["settings_a"], "settings_b": rating["settings_b"],
                      "tie": True, "rated_at": stamp}
            target, read = self.ties, self.tie_records
        else:
            won, lost = ("a", "b") if rating["winner"] == "a" else ("b", "a")
            record = {**base, "chosen": rating[f"answer_{won}"],
                      "rejected": rating[f"answer_{lost}"],
                      "chosen_model": rating[f"model_{won}"],
                      "rejected_model": rating[f"model_{lost}"],
                      "chosen_settings": rating[f"settings_{won}"],
                      "rejected_settings": rating[f"settings_{lost}"], "rated_at": stamp}
            target, read = self.path, self.pairs
        with self._locked():
            atomic_write_json(target, [*read(), record])
        return record

    def summary(self) -> dict[str, Any]:
        """Wins, losses and ties per model label; a tie counts half a win (win_rate)."""
        with self._lock:
            pairs, ties = self.pairs(), self.tie_records()
        table: dict[str, dict[str, int]] = {}

        def row(label: Any) -> dict[str, int]:
            return table.setdefault(str(label), {"wins": 0, "losses": 0, "ties": 0})

        for pair in pairs:
            row(pair.get("chosen_model", "unknown"))["wins"] += 1
            row(pair.get("rejected_model", "unknown"))["losses"] += 1
        for tie in ties:
            for side in ("model_a", "model_b"):
                row(tie.get(side, "unknown"))["ties"] += 1
        models = []
        for label, counts in table.items():
            games = counts["wins"] + counts["losses"] + counts["ties"]
            models.append({"model": label, **counts, "games": games,
                           "win_rate": (counts["wins"] + 0.5 * counts["ties"]) / games})
        models.sort(key=lambda m: (-m["win_rate"], -m["games"], m["model"]))
        return {"file": str(self.path), "ties_file": str(self.ties), "pairs": len(pairs),
                "ties": len(ties), "models": models}


def parse_rating(body: Any) -> dict[str, Any]:
    """A rating request checked field by field (400 naming the field otherwise)."""
    if not isinstance(body, dict):
        raise bad_param("body", "the request body must be a JSON object")
    out: dict[str, Any] = {}
    for name in ("prompt", "answer_a", "answer_b"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            raise bad_param(name, f"must be a non-empty string of at most {MAX_TEXT:,} "
                             "characters")
        out[name] = value
    value = body.get("input", "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise bad_param("input", "must be a string (\"\" when the prompt has no input)")
    out["input"] = value
    if body.get("winner") not in ("a", "b", "tie"):
        raise bad_param("winner", f"must be \"a\", \"b\" or \"tie\", got {body.get('winner')!r:.40}")
    out["winner"] = body["winner"]
    for side in ("a", "b"):
        label = body.get(f"model_{side}")
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
            raise bad_param(f"model_{side}", "must name what produced the answer (a non-empty "
                             f"string of at most {MAX_LABEL} characters)")
        out[f"model_{side}"] = label
        settings = body.get(f"settings_{side}") or {}
        if not isinstance(settings, dict) or len(settings) > 16 or not all(
                isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
                for k, v in settings.items()):
            raise bad_param(f"settings_{side}", "must be an object of at most 16 plain values "
                             "(e.g. temperature, top_p, seed)")
        out[f"settings_{side}"] = settings
    return out
