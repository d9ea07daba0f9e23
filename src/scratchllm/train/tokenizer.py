"""The tokenizer a pretraining run encodes its text with: a named one, a file, or one it trains.

``tokenizer: bpe:N`` trains a byte-level BPE of N tokens (book 2.5) on the run's *training*
split only, so no validation text leaks into the vocabulary. ``bpe:257`` has no merges at all:
one token per byte, which on ASCII text is a character-level model. Training is
deterministic (ties go to the smallest ids), so a resumed run rebuilds the same tokenizer from
the same text; the run's model directories store it, so ``generate`` needs nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

from scratchllm.errors import ConfigError
from scratchllm.tokenizers import BPETokenizer, Tokenizer, get_tokenizer

_TRAINED = re.compile(r"bpe:(\d+)")
MIN_BPE = 257  # the 256 byte tokens and <|endoftext|>


def trained_bpe_size(name: str) -> int | None:
    """N for ``"bpe:N"``, None for any other tokenizer name; a bad N is a ConfigError."""
    if not name.lower().startswith("bpe:"):
        return None
    match = _TRAINED.fullmatch(name.lower())
    if match is None or int(match.group(1)) < MIN_BPE:
        raise ConfigError(f"tokenizer {name!r}: write bpe:N with N >= {MIN_BPE} (256 bytes + "
                          "<|endoftext|>), e.g. bpe:512, to train a BPE on the training split")
    return int(match.group(1))


def run_tokenizer(name: str, data: str | None, train_ratio: float) -> Tokenizer:
    """``get_tokenizer(name)``, or for ``bpe:N`` a BPE trained on the training split of ``data``
    (a text file, or the bundled story when None) split exactly as the batches split it."""
    size = trained_bpe_size(name)
    if size is None:
        return get_tokenizer(name)
    from scratchllm.data import read_text_file, train_val_split
    from scratchllm.train.batches import embedded_verdict_text

    text = embedded_verdict_text() if data is None else read_text_file(Path(data))
    train_text, _ = train_val_split(text, train_ratio)
    return BPETokenizer.train(train_text, size)
