"""Text <-> token ids (book chapter 2).

* ``SimpleTokenizer``: the book's word-level tokenizer with ``<|unk|>`` (book 2.2-2.4).
* ``BPETokenizer``: byte-level BPE in plain Python; train your own or load GPT-2's (book 2.5).
* ``GPT2Tokenizer``: GPT-2's exact tokenizer on tiktoken's fast Rust core (book 2.5).
* ``get_tokenizer("gpt2" | "path/to/bpe.json")`` and ``tokenizer_from_dict(spec)``.
* ``IncrementalDecoder`` / ``decode_stream`` for printing generated tokens as they arrive.

All refuse text containing ``<|endoftext|>`` unless ``allowed_special`` allows it.
"""

from scratchllm.tokenizers.base import Tokenizer, get_tokenizer, tokenizer_from_dict
from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
from scratchllm.tokenizers.simple import SimpleTokenizer
from scratchllm.tokenizers.streaming import IncrementalDecoder, decode_stream

__all__ = [
    "BPETokenizer",
    "GPT2Tokenizer",
    "IncrementalDecoder",
    "SimpleTokenizer",
    "Tokenizer",
    "decode_stream",
    "get_tokenizer",
    "tokenizer_from_dict",
]
