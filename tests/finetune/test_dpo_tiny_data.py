"""A preference file too small for the 85/5/10 split gets a message about the split, not
about truncation (the page's first rating is such a file)."""
import pytest

from scratchllm.data.instruction import split_entries
from scratchllm.data.preference import PreferenceDataset
from scratchllm.errors import DataError
from scratchllm.finetune.dpo import check_responses_fit


def test_one_record_names_the_split_not_truncation():
    entries = [{"instruction": "Say hi.", "input": "", "chosen": "Hi.", "rejected": "No."}]
    train, _, _ = split_entries(entries)
    assert train == []  # int(1 * 0.85) == 0: nothing to train on
    with pytest.raises(DataError, match="split leaves no training pair") as err:
        check_responses_fit(PreferenceDataset(train, tokenizer=None), collate=None,
                            data_file="ratings.json", max_length=64)
    assert "at least 2" in str(err.value)


def test_two_records_leave_one_training_pair():
    entries = [{"instruction": f"Q{i}", "input": "", "chosen": "a", "rejected": "b"}
               for i in range(2)]
    assert len(split_entries(entries)[0]) == 1
