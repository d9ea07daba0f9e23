"""Shared test fixtures: the project's real data files and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

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


# Hypothesis (tests/fuzz): 100 examples a property (tests that touch files or start processes
# set fewer) and no deadline, because a shared 2-core machine makes timings noisy. CI=true picks
# "ci": derandomized, so a red CI run replays the same way locally, and no example database.
# HYPOTHESIS_PROFILE=thorough runs 1000 examples where a test sets no count, for bug hunts.
# (Registered here, not in tests/fuzz/conftest.py: another conftest module would shadow
# `from conftest import ...` in other folders.)
_HYPOTHESIS = dict(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", **_HYPOTHESIS)
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_HYPOTHESIS)
settings.register_profile("thorough", **{**_HYPOTHESIS, "max_examples": 1000})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: they gain nothing from more, and on a
    shared 2-core machine two threads that wait on each other turn a 10 ms step into half a
    second. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")`` (or an
    autouse fixture in their folder's conftest that requests it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
