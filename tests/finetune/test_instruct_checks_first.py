"""A bad test-answer length is refused before anything is read or written, not after training."""
import pytest

from scratchllm.errors import ConfigError
from scratchllm.finetune.instruct import finetune_instruct


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_new_tokens_is_refused_up_front(tmp_path, bad):
    with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer"):
        finetune_instruct(tmp_path / "no-model", tmp_path / "no-data.json", tmp_path / "out",
                          max_new_tokens=bad)
    assert not (tmp_path / "out").exists()


def test_no_test_answers_needs_no_length(tmp_path):
    """With generate_test=False the length is unused; the run fails later, on the data."""
    with pytest.raises(Exception) as err:
        finetune_instruct(tmp_path / "no-model", tmp_path / "no-data.json", tmp_path / "out",
                          max_new_tokens=0, generate_test=False)
    assert "max_new_tokens" not in str(err.value)
