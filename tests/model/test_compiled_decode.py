"""Compiled decoding (``scratchllm.model.compiled_decode``): the one-token KV-cached step
through ``torch.compile`` must pick the eager model's greedy tokens with logits within
float32 rounding, compile once for every cache length, and leave every other call (prefill,
batches, training) on the eager forward. Each compile of a tiny model takes seconds on two
cores, so the compiled models are built once per module."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ConfigError
from scratchllm.generate import generate, generate_batch
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model import compiled_decode
from scratchllm.model.compiled_decode import check_compile, compile_decoding
from scratchllm.model.decode_layout import prepare_decoding
from scratchllm.model.int8_linear import Int8Linear
from scratchllm.model.quantize import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def inductor_asserts():
    """Compile with inductor's size and alignment asserts on (decoding runs without them):
    every opaque linear's real output is checked against what its fake kernel promised."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_decode, "DEFAULT_OPTIONS", {})
        yield


PROMPT = [5, 17, 3, 99, 42, 7]


def _gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=128, context_length=48, emb_dim=32, n_heads=2,
                              n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True)).eval()


def _qwen3() -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig.preset("tiny-qwen3", vocab_size=128, context_length=48,
                                         dtype="float32")).eval()


def _pair(build, kind: str):
    """(eager, compiled) copies of one model, laid out as ``generate`` runs them."""
    eager = build()
    if kind == "int8":
        quantize_model(eager, "int8")
    prepare_decoding(eager, 1)
    compiled = copy.deepcopy(eager)
    seconds = compile_decoding(compiled)
    assert seconds > 0  # warmed up at once, not at the first real step
    return eager, compiled


@pytest.fixture(scope="module", params=[("gpt", "fp32"), ("gpt", "int8"), ("qwen3", "fp32"),
                                        ("qwen3", "int8")], ids=lambda p: "-".join(p))
def pair(request):
    family, kind = request.param
    return _pair(_gpt if family == "gpt" else _qwen3, kind)


def _counting(model) -> list[int]:
    """Count the calls that reach the compiled step (the routed forward's second argument)."""
    calls: list[int] = []
    routed = model.forward
    compiled = routed.args[1]

    def counted(*args):
        calls.append(1)
        return compiled(*args)

    model.forward = functools.partial(routed.func, model, counted)
    return calls


def _step_logits(model, prompt: list[int], steps: int) -> torch.Tensor:
    """Logits of ``steps`` one-token cached calls after a prefill, feeding fixed tokens."""
    with torch.inference_mode():
        cache = model.new_cache(len(prompt) + steps + 1)
        model(torch.tensor([prompt]), cache=cache)
        return torch.cat([model(torch.tensor([[(7 * i + 3) % 128]]), cache=cache)[0]
                          for i in range(steps)])


def test_same_tokens_and_logits_as_eager_without_recompiles(pair):
    eager, compiled = pair
    calls = _counting(compiled)
    # error_on_recompile: a cache length (or a cache size) the warm-up did not see must not
    # compile again
    with torch._dynamo.config.patch(error_on_recompile=True):
        tokens = generate(compiled, PROMPT, 20)
        logits = _step_logits(compiled, PROMPT * 3, 12)
    assert len(calls) == 19 + 12  # every step after each prefill was the compiled one
    assert tokens == generate(eager, PROMPT, 20)
    expected = _step_logits(eager, PROMPT * 3, 12)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_other_calls_stay_eager(pair):
    """Prefill, batches, a padded batch and a cache-less call never reach the compiled step,
    and give the eager model's outputs bit for bit."""
    eager, compiled = pair
    calls = _counting(compiled)
    prompts = [PROMPT, PROMPT[:3], PROMPT[1:]]
    assert generate_batch(compiled, prompts, 5) == generate_batch(eager, prompts, 5)
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        assert torch.equal(compiled(ids), eager(ids))
        assert torch.equal(compiled(ids[:, :1]), eager(ids[:, :1]))  # one token, no cache
    assert generate(compiled, PROMPT, 4, use_cache=False) == generate(eager, PROMPT, 4,
                                                                      use_cache=False)
    assert calls == []


def test_a_compiled_model_still_trains_and_saves_the_same_state():
    """Calls with gradients run the eager forward: a compiled (not inference-laid-out) model
    trains as before, and its state dict has the same keys and values."""
    model = _gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compile_decoding(model, warm_up=False)
    assert model.state_dict().keys() == before.keys()
    model.train()
    x = torch.tensor([PROMPT])
    loss = F.cross_entropy(model(x).flatten(0, 1), torch.tensor(PROMPT[1:] + [0]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_copied_int8_layer_gets_its_own_handle():
    """The op finds a layer by handle: a deep copy must not run the original's weights."""
    model = quantize_model(_gpt(), "int8")
    compile_decoding(model, warm_up=False)
    layer = next(m for m in model.modules() if isinstance(m, Int8Linear))
    assert layer.handle is not None
    assert copy.deepcopy(layer).handle is None


def test_bad_combinations_are_refused():
    with pytest.raises(ConfigError, match="CPU decoding only"):
        check_compile("cuda")
    with pytest.raises(ConfigError, match="batched decoding stays eager"):
        check_compile("cpu", decode_rows=8)
    with pytest.raises(ConfigError, match="batched decoding stays eager"):
        prepare_decoding(_gpt(), 4, compile=True)


def test_no_cxx_compiler_is_one_clear_error(monkeypatch):
    import scratchllm.model.compiled_decode as compiled_decode

    monkeypatch.setattr(compiled_decode.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        check_compile("cpu")
