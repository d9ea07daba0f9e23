"""Shared test fixtures: the project's real data files and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# ``shared/data`` beside the checkout, or wherever SCRATCHLLM_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SCRATCHLLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (the-verdict, tiny Shakespeare, GPT-2 vocab, ...)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}; set SCRATCHLLM_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so results do not depend on test order."""
    torch.manual_seed(0)
    yield
