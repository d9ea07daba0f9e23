"""``DecodeStats``: time to first token and decode rate of a stream, on a fake clock."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import DecodeStats, stream
from scratchllm.generate import stats as stats_mod
from scratchllm.model import GPTConfig, GPTModel

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeClock:
    """perf_counter that advances by a fixed step per read: 0.5 s before the first token
    (the prefill), then 0.1 s per token."""

    def __init__(self) -> None:
        self.now, self.reads = 100.0, 0

    def __call__(self) -> float:
        self.now += 0.0 if self.reads == 0 else (0.5 if self.reads == 1 else 0.1)
        self.reads += 1
        return self.now


def test_stream_fills_in_time_to_first_token_and_rates(monkeypatch):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=32, emb_dim=16, n_heads=2,
                               n_layers=1, drop_rate=0.0)).eval()
    monkeypatch.setattr(stats_mod.time, "perf_counter", FakeClock())
    stats = DecodeStats()
    tokens = list(stream(model, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 11, stats=stats))
    assert len(tokens) == 11 == stats.generated_tokens and stats.prompt_tokens == 10
    # begin at 100.0; first token at 100.5; ten more at 0.1 s each: last at 101.5
    assert stats.time_to_first_token == pytest.approx(0.5)
    assert stats.prompt_tokens_per_s == pytest.approx(10 / 0.5)
    assert stats.decode_seconds == pytest.approx(1.0)
    assert stats.decode_tokens_per_s == pytest.approx(10 / 1.0)
    lines = stats.lines(load_seconds=1.25)
    assert lines == ["load time:           1.25 s", "prompt tokens:       10",
                     "time to first token: 500.0 ms", "prompt rate:         20.0 tokens/s",
                     "generated tokens:    11", "decode time:         1.00 s",
                     "decode rate:         10.0 tokens/s"]


def test_a_stream_stopped_at_once_reports_no_rates():
    stats = DecodeStats()
    stats.begin(4)
    assert stats.time_to_first_token is None and stats.decode_tokens_per_s is None
    assert stats.lines() == ["prompt tokens:       4", "generated tokens:    0"]
    stats.token()  # one token: a time to first token, but no decode rate yet
    assert stats.time_to_first_token is not None and stats.decode_tokens_per_s is None
