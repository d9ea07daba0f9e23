"""Learning byte-pair merges from text (book 2.5 and its from-scratch BPE bonus).

Training repeatedly merges the most frequent adjacent pair of tokens into a new token. Two
choices keep it fast enough for real text in pure Python:

* the text is first cut into GPT-2 pre-tokenizer chunks and each distinct chunk is stored once
  with its count, so "the" appearing 5,000 times costs one word, not 5,000;
* pair counts are updated only for the words that contain the merged pair, instead of being
  recounted over the whole corpus after every merge.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

Pair = tuple[int, int]


def merge_pair(word: tuple[int, ...], pair: Pair, new_id: int) -> tuple[int, ...]:
    """Replace every non-overlapping occurrence of ``pair`` in ``word`` (left to right)."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(
    chunks: Iterable[tuple[tuple[int, ...], int]],
    token_bytes: list[bytes],
    num_new_tokens: int,
) -> list[tuple[Pair, int]]:
    """Learn merges over ``(word, count)`` pairs whose words are tuples of base token ids.

    ``token_bytes`` (id -> bytes) is extended in place with each new token. Returns
    ``[((left_id, right_id), new_id), ...]`` in merge order. Ties in frequency go to the pair
    with the smallest ids, so training is deterministic. A merge whose bytes already exist as a
    token (e.g. "ab"+"c" after "a"+"bc") reuses that id instead of adding a duplicate token.
    Stops early when no pair occurs twice.
    """
    words: list[tuple[int, ...]] = []
    counts: list[int] = []
    for word, count in chunks:
        words.append(word)
        counts.append(count)

    pair_counts: Counter[Pair] = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for idx, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[idx]
            where[pair].add(idx)

    bytes_to_id = {b: i for i, b in enumerate(token_bytes)}
    merges: list[tuple[Pair, int]] = []
    added = 0
    while added < num_new_tokens and pair_counts:
        best = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
        if pair_counts[best] < 2:
            break
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        new_id = bytes_to_id.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes.append(merged)
            bytes_to_id[merged] = new_id
            added += 1
        merges.append((best, new_id))

        for idx in where.pop(best):
            old, count = words[idx], counts[idx]
            new = merge_pair(old, best, new_id)
            if new == old:  # stale index: the pair vanished from this word earlier
                continue
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= count
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            for pair in zip(new, new[1:]):
                pair_counts[pair] += count
                where[pair].add(idx)
            words[idx] = new
        pair_counts.pop(best, None)
    return merges
