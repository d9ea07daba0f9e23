"""Toy preference data shared by the reward-model tests: a cue a tiny model learns quickly."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["red", "blue", "table", "river", "stone", "cloud", "apple", "green"]


def write_thanks_pairs(path: Path, count: int, *, seed: int, max_words: int) -> Path:
    """``count`` pairs whose chosen answer ends with 'thanks' and rejected with 'no' (the same
    1..``max_words`` random words before it), written as the book's preference JSON."""
    rng = random.Random(seed)
    entries = []
    for _ in range(count):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
        entries.append({"instruction": f"Say {rng.choice(WORDS)}.", "input": "",
                        "chosen": f"{body} thanks", "rejected": f"{body} no"})
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path
