"""Preference pairs for DPO: masks cover exactly each response and its end-of-text."""

from __future__ import annotations

import pytest

from scratchllm.data.instruction import format_prompt
from scratchllm.data.preference import PreferenceDataset, load_preference_data, preference_collate
from scratchllm.errors import DataError
from scratchllm.tokenizers import GPT2Tokenizer


@pytest.fixture(scope="module")
def tok(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def pairs(shared_data):
    return load_preference_data(shared_data / "instruction" / "instruction-data-with-preference.json")


def test_real_file_loads(pairs):
    assert len(pairs) == 1100 and all(p["chosen"] and p["rejected"] for p in pairs)


def test_masks_select_each_response(pairs, tok):
    batch = preference_collate(PreferenceDataset(pairs[:4], tok), pad_id=tok.eot_id)
    shapes = {v.shape for v in batch.values()}
    assert len(shapes) == 1  # chosen and rejected padded to one length
    for row, entry in enumerate(pairs[:4]):
        for key in ("chosen", "rejected"):
            targets, mask = batch[f"{key}_targets"][row], batch[f"{key}_mask"][row]
            assert tok.decode(targets[mask].tolist()) == entry[key] + "<|endoftext|>"
            assert (targets[~mask] == -100).all()
            n_prompt = len(tok.encode(format_prompt(entry)))
            assert batch[f"{key}_inputs"][row, :n_prompt].tolist() == tok.encode(format_prompt(entry))


def test_missing_rejected_names_entry(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"instruction": "a", "input": "", "chosen": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"entry 0 lacks field\(s\) \['rejected'\]"):
        load_preference_data(path)


def test_empty_batch_is_refused():
    with pytest.raises(DataError):
        preference_collate([], pad_id=0)
