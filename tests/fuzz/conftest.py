"""Hypothesis profiles for the fuzz tests: small and fast locally, fixed and replayable in CI.

Properties run 100 examples (tests that touch files or start processes set fewer) with no
deadline, because a shared 2-core machine makes timings noisy. ``CI=true`` picks ``ci``:
derandomized (the same examples every run, so a red CI run reproduces locally) and no example
database. ``HYPOTHESIS_PROFILE=thorough`` runs 1000 examples where a test sets no count of its
own, for hunting bugs by hand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", **_COMMON)
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("thorough", **{**_COMMON, "max_examples": 1000})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev"))
