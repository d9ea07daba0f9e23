"""Instruction data (book 7.2-7.3): formats, split, collate and masks against the book."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.data.instruction import (
    InstructionDataset,
    encode_example,
    format_example,
    format_input,
    format_prompt,
    instruction_collate,
    load_instruction_data,
    split_entries,
)
from scratchllm.errors import ConfigError, DataError, MissingFileError
from scratchllm.tokenizers import GPT2Tokenizer

ENTRY = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
         "output": "The car is as fast as lightning."}


def book_ch07():
    """The book's chapter 7 module (a test-only reference, installed by ``make test``)."""
    return pytest.importorskip("llms_from_scratch.ch07")


@pytest.fixture(scope="module")
def tok(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def data(shared_data):
    return load_instruction_data(shared_data / "instruction" / "instruction-data.json")


def test_collate_matches_book_hand_built_batch():
    # Book 7.3: inputs [[0..4], [5, 6], [7, 8, 9]] padded with 50256.
    inputs, targets = instruction_collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256],
                               [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100],
                                [8, 9, 50256, -100, -100]]


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = instruction_collate([[0, 1, 2, 3, 4], [5, 6]], pad_id=9, max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 9, -100]]


def test_end_of_text_inside_text_stays_a_target():
    # The book finds padding by value and would wrongly ignore this in-text 50256.
    _, targets = instruction_collate([[1, 50256, 2], [3]], pad_id=50256)
    assert targets.tolist() == [[50256, 2, 50256], [50256, -100, -100]]


def test_mask_prompt_hides_exactly_the_instruction_targets():
    items = [{"ids": [10, 11, 12, 13, 14], "mask_len": 3}, {"ids": [20, 21, 22], "mask_len": 2}]
    _, targets = instruction_collate(items, pad_id=0, mask_prompt=True)
    # Targets predicting prompt tokens 1..mask_len-1 are ignored; the first response token is kept.
    assert targets.tolist() == [[-100, -100, 13, 14, 0], [-100, 22, 0, -100, -100]]


def test_mask_prompt_needs_mask_lengths():
    with pytest.raises(DataError, match="mask_len"):
        instruction_collate([[1, 2]], pad_id=0, mask_prompt=True)


def test_alpaca_format_is_the_books(data):
    ch07 = book_ch07()
    for entry in data[:50]:
        assert format_input(entry) == ch07.format_input(entry)
        assert format_example(entry) == ch07.format_input(entry) + f"\n\n### Response:\n{entry['output']}"
    no_input = {"instruction": "Name a color.", "input": "", "output": "Blue."}
    assert format_example(no_input) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.")


def test_phi3_format_matches_exercise_7_1():
    assert format_example(ENTRY, "phi3") == ("<|user|>\nRewrite the sentence using a simile.\n"
                                             "The car is very fast.\n<|assistant|>:\n"
                                             "The car is as fast as lightning.")
    assert format_prompt({**ENTRY, "input": ""}, "phi3") == (
        "<|user|>\nRewrite the sentence using a simile.\n<|assistant|>:\n")
    with pytest.raises(ConfigError, match="alpaca"):
        format_input(ENTRY, "chatml")


def test_split_counts_and_order_match_the_book(data, shared_data):
    train, val, test = split_entries(data)
    assert (len(data), len(train), len(val), len(test)) == (1100, 935, 55, 110)
    assert train[0] == data[0] and test[0] == data[935] and val[-1] == data[-1]
    # The book's published test answers are for exactly this test split, in this order.
    published = json.loads((shared_data / "instruction" / "instruction-data-with-response.json")
                           .read_text(encoding="utf-8"))
    assert [e["instruction"] for e in test] == [e["instruction"] for e in published]


def test_shuffled_split_is_seeded_and_complete(data):
    a = split_entries(data, shuffle=True, seed=1)
    assert a == split_entries(data, shuffle=True, seed=1)
    assert a[2] != split_entries(data, shuffle=True, seed=2)[2]
    assert sorted(json.dumps(e) for part in a for e in part) == sorted(json.dumps(e) for e in data)


def test_encoded_example_equals_tokenizing_the_whole_text(data, tok):
    for entry in data:
        item = encode_example(entry, tok)
        assert item["ids"] == tok.encode(format_example(entry))
        assert item["ids"][:item["input_len"]] == tok.encode(format_input(entry))
        assert item["ids"][:item["prompt_len"]] == tok.encode(format_prompt(entry))


def test_dataset_mask_learns_only_response_and_header(data, tok):
    item = InstructionDataset(data[:1], tok)[0]
    _, targets = instruction_collate([item], pad_id=tok.eot_id, mask_prompt=True)
    learned = [t for t in targets[0].tolist() if t != -100]
    assert tok.decode(learned) == "\n\n### Response:\n" + data[0]["output"] + "<|endoftext|>"


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "x"}', "expected a list"),
    ("[]", "empty list"),
    ('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ""}]',
     r"entry 1 lacks field\(s\) \['output'\]"),
    ('[{"instruction": "a", "input": 3, "output": "b"}]', "entry 0 field"),
    ("[1, 2]", "entry 0 is a int"),
    ("not json", "not valid UTF-8 JSON"),
])
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_instruction_data(path)
    assert "bad.json" in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        load_instruction_data(tmp_path / "nope.json")


def test_collate_returns_long_tensors():
    inputs, targets = instruction_collate([[1, 2]], pad_id=0)
    assert inputs.dtype == targets.dtype == torch.long
