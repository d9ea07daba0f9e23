"""Datasets for pretraining: the book's sliding windows (book 2.6) and large token files.

Small texts: ``create_dataloader(text, ...)`` tokenizes and batches input/target windows.
Large corpora: ``prepare_corpus`` (or ``scratchllm prepare``) writes ``train.bin``/``val.bin``
once; ``TokenShard`` memory-maps them and ``ShardBatcher`` draws resumable random batches.
"""

from scratchllm.data.corpus import PreparedCorpus, PrepareProgress, prepare_corpus
from scratchllm.data.shards import ShardBatcher, ShardDataset, TokenShard
from scratchllm.data.sliding_window import SlidingWindowDataset, create_dataloader, train_val_split
from scratchllm.data.text_files import find_text_files, read_text_file

__all__ = [
    "SlidingWindowDataset",
    "create_dataloader",
    "train_val_split",
    "read_text_file",
    "find_text_files",
    "prepare_corpus",
    "PreparedCorpus",
    "PrepareProgress",
    "TokenShard",
    "ShardDataset",
    "ShardBatcher",
]
