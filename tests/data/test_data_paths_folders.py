"""A folder passed where a data file belongs is named as a folder, not as 'not found'."""

from __future__ import annotations

import pytest

from scratchllm.data.classification import load_labelled_file
from scratchllm.data.instruction import load_json_entries
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.rl.prompts import load_prompts


@pytest.mark.parametrize("load", [lambda p: load_json_entries(p, ("instruction",)),
                                  load_labelled_file, load_prompts])
def test_a_folder_is_called_a_folder(tmp_path, load):
    (tmp_path / "data").mkdir()
    with pytest.raises(ScratchLLMError) as err:
        load(tmp_path / "data")
    assert "is a folder" in str(err.value) and "not found" not in str(err.value)
    with pytest.raises(ScratchLLMError, match="not found"):
        load(tmp_path / "missing.json")
