"""Sampling filters on hand-computed distributions and the book's section 5.3 example."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.errors import ConfigError
from scratchllm.generate import (
    apply_temperature,
    check_sampling_args,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

# Probabilities of logits [2, 1, 0, -1]: e^l / sum(e^l), by hand.
LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
_EXP = [math.exp(v) for v in (2.0, 1.0, 0.0, -1.0)]
PROBS = [e / sum(_EXP) for e in _EXP]  # 0.6439, 0.2369, 0.0871, 0.0321

# Book 5.3: vocabulary of 9 words and the next-token logits after "every effort moves you".
BOOK_VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward",
              "you"]
BOOK_LOGITS = torch.tensor([[4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]])


def _kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def _softmax_by_hand(values: list[float]) -> list[float]:
    exps = [math.exp(v - max(values)) for v in values]
    return [e / sum(exps) for e in exps]


def test_top_k_keeps_the_k_largest_with_renormalized_probabilities():
    probs = torch.softmax(top_k_filter(LOGITS, 2), dim=-1)[0]
    expected = [_EXP[0] / (_EXP[0] + _EXP[1]), _EXP[1] / (_EXP[0] + _EXP[1]), 0.0, 0.0]
    torch.testing.assert_close(probs, torch.tensor(expected))
    assert probs[0].item() == pytest.approx(0.7311, abs=1e-4)
    assert _kept(top_k_filter(LOGITS, 1)) == [0]
    assert _kept(top_k_filter(LOGITS, 100)) == [0, 1, 2, 3]  # k > vocab keeps everything


@pytest.mark.parametrize("p, kept", [
    (0.5, [0]),  # the top token alone holds 0.644 >= 0.5
    (0.8, [0, 1]),  # 0.644 < 0.8 <= 0.644 + 0.237 = 0.881
    (0.88, [0, 1]),
    (0.89, [0, 1, 2]),  # needs the third token: 0.881 < 0.89 <= 0.968
    (1.0, [0, 1, 2, 3]),
    (1e-9, [0]),  # the top token always survives
])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    assert sum(PROBS[:2]) == pytest.approx(0.8808, abs=1e-4)
    assert _kept(top_p_filter(LOGITS, p)) == kept


def test_top_p_works_on_unsorted_rows_independently():
    logits = torch.tensor([[-1.0, 0.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    out = top_p_filter(logits, 0.8)
    assert torch.isfinite(out[0]).tolist() == [False, False, True, True]
    assert torch.isfinite(out[1]).sum().item() == 4  # 4 x 0.25: all four needed for 0.8
    assert torch.equal(out[0, 2:], logits[0, 2:])  # kept logits are untouched


@pytest.mark.parametrize("min_p, kept", [
    (0.0, [0, 1, 2, 3]),
    (0.1, [0, 1, 2]),  # relative probabilities 1, e^-1=0.37, e^-2=0.14, e^-3=0.05
    (0.2, [0, 1]),
    (0.5, [0]),
    (1.0, [0]),
])
def test_min_p_keeps_tokens_relative_to_the_top_one(min_p, kept):
    assert _kept(min_p_filter(LOGITS, min_p)) == kept


def test_temperature_rescales_logits_as_in_book_5_3():
    for temperature in (1.0, 0.1, 5.0):
        probs = torch.softmax(apply_temperature(BOOK_LOGITS, temperature), dim=-1)[0]
        expected = _softmax_by_hand([v / temperature for v in BOOK_LOGITS[0].tolist()])
        torch.testing.assert_close(probs, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    # Low temperature is nearly greedy ("forward"); high temperature flattens towards uniform.
    assert torch.softmax(BOOK_LOGITS / 0.1, -1)[0, 3].item() > 0.99
    assert torch.softmax(BOOK_LOGITS / 5.0, -1)[0].max().item() < 0.25
    with pytest.raises(ConfigError):
        apply_temperature(BOOK_LOGITS, 0.0)


def test_book_top_3_example():
    filtered = top_k_filter(BOOK_LOGITS, 3)
    assert [BOOK_VOCAB[i] for i in _kept(filtered)] == ["closer", "forward", "toward"]
    assert sorted(filtered[torch.isfinite(filtered)].tolist(), reverse=True) == \
        pytest.approx([6.75, 6.28, 4.51])
    # The book prints these probabilities after top-3 and softmax.
    torch.testing.assert_close(
        torch.softmax(filtered, dim=-1)[0, [0, 3, 7]], torch.tensor([0.0615, 0.5775, 0.3610]),
        atol=5e-5, rtol=0)


def test_greedy_is_argmax():
    assert sample_next_token(BOOK_LOGITS).tolist() == [3]  # "forward" (book 5.3)
    two_rows = torch.cat([BOOK_LOGITS, LOGITS.new_tensor([[0, 0, 0, 0, 0, 0, 0, 0, 9.0]])])
    assert sample_next_token(two_rows, temperature=0.0, top_k=1).tolist() == [3, 8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_ties_pick_the_first_maximum_as_argmax_does(dtype):
    """Greedy must pick the same token whatever reduction computes it: the FIRST of tied
    maxima (bf16 logits tie often), and a NaN logit wins as in argmax. A long row, since
    CPU reductions split long rows across vector lanes and threads."""
    logits = torch.zeros(3, 70_000, dtype=dtype)
    logits[0, [9, 5, 60_000]] = 3.0
    logits[1, 40_000:] = 1.0
    logits[2, 3], logits[2, 7] = 5.0, float("nan")
    assert sample_next_token(logits).tolist() == [5, 40_000, 7]


def test_sampling_reproduces_the_books_1000_draws():
    """Book 5.3: 1,000 draws after torch.manual_seed(123) give 73 closer, 582 forward,
    2 inches and 343 toward."""
    torch.manual_seed(123)
    draws = [sample_next_token(BOOK_LOGITS, temperature=1.0).item() for _ in range(1000)]
    counts = torch.bincount(torch.tensor(draws), minlength=9).tolist()
    assert counts == [73, 0, 0, 582, 2, 0, 0, 343, 0]


def test_sampling_respects_filters_and_generator():
    logits = LOGITS.expand(2000, 4)
    gen = torch.Generator().manual_seed(1)
    draws = sample_next_token(logits, temperature=1.0, top_k=2, generator=gen)
    assert set(draws.tolist()) == {0, 1}
    assert (draws == 0).float().mean().item() == pytest.approx(0.7311, abs=0.04)
    assert set(sample_next_token(logits, 1.0, top_p=0.5).tolist()) == {0}
    assert set(sample_next_token(logits, 1.0, min_p=0.2).tolist()) == {0, 1}
    first = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(7))
    again = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature="hot"),
    dict(top_k=0), dict(top_k=2.5), dict(top_k=True),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.2),
    dict(min_p=-0.1), dict(min_p=1.01),
])
def test_invalid_sampling_args_raise_value_error(kwargs):
    with pytest.raises(ValueError) as err:
        check_sampling_args(**kwargs)
    assert next(iter(kwargs)) in str(err.value)


def test_valid_edge_values_are_accepted():
    check_sampling_args(temperature=0, top_k=1, top_p=1.0, min_p=0.0)
    check_sampling_args(temperature=2.0, top_k=None, top_p=None, min_p=1.0)


def test_fp16_logits_are_sampled_in_fp32_so_a_small_temperature_cannot_overflow():
    """300 / 0.001 = 3e5 is past fp16's largest finite value (65504): dividing in fp16 gives
    inf, and softmax(inf, inf, ...) is NaN. In fp32 the 1000-logit gap makes token 0 certain
    (its rival has probability e^-1000)."""
    logits = torch.tensor([[300.0, 299.0, 0.0, -5.0]], dtype=torch.float16)
    assert torch.isinf(logits / 0.001).any()  # the overflow the fp32 cast avoids
    gen = torch.Generator().manual_seed(0)
    for kwargs in [{}, {"top_k": 3}, {"top_p": 0.9}, {"min_p": 0.05}]:
        draws = [sample_next_token(logits.repeat(64, 1), 0.001, generator=gen, **kwargs)
                 for _ in range(4)]
        assert torch.cat(draws).tolist() == [0] * 256, kwargs
    # At temperature 1 the two top tokens split e : 1 (p0 = e / (1 + e) = 0.7311), and the
    # fp16 input gives the same frequencies as the fp32 one.
    wide = torch.tensor([[300.0, 299.0, -1000.0, -1000.0]], dtype=torch.float16)
    draws = sample_next_token(wide.repeat(20000, 1), 1.0, generator=gen)
    assert draws.max() <= 1
    assert (draws == 0).float().mean().item() == pytest.approx(math.e / (1 + math.e), abs=0.01)
