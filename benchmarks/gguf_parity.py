"""llama.cpp runs scratchllm's GGUF export as scratchllm runs the model, and how fast.

Parity (llama-cpp-python, built from its sdist): random tiny GPT-2, Llama 3 (with Llama 3.1
RoPE scaling) and Qwen3 models and the 124M GPT-2 shape are exported with
``scratchllm.weights.gguf_export``; llama.cpp evaluates a prompt plus 30 greedy tokens with
``logits_all=True``. Reported per model: greedy tokens equal to ``scratchllm.generate``'s
(f32 and q8_0), and the largest logit difference from our forward pass over the same ids
(target: 1e-3 in f32).

Speed: batch 1, a 10-token prompt, 200 new greedy tokens, 2 threads for both, the 124M GPT-2
shape (random weights, GPT-2's layout): llama.cpp f32 and q8_0 beside scratchllm fp32 with its
KV cache, alternated, best of 3 each. The last line reads
``scratchllm fp32 decode: X tok/s (llama.cpp f32: Y tok/s, ratio X/Y)``.

Run: ``nice -n 5 python benchmarks/gguf_parity.py [--quick]`` (``--quick``: 50 new tokens,
one timing round). Other benchmarks import ``export_gguf_file`` and ``llama_cpp_tokens_per_s``
to put llama.cpp beside their own numbers on the same weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_flags, machine_summary  # noqa: E402

PROMPT_LEN, NEW_TOKENS, PARITY_TOKENS, THREADS = 10, 200, 30, 2


def export_gguf_file(model: torch.nn.Module, path: Path, type_name: str = "f32",
                     tokenizer: Any = None) -> Path:
    """``model`` as a GGUF file (GPT-2's tokenizer unless one is given; the model's vocabulary
    must be at least 50,257 rows then)."""
    from scratchllm.tokenizers import GPT2Tokenizer
    from scratchllm.weights.gguf_export import write_gguf

    return write_gguf(model, tokenizer or GPT2Tokenizer(), path, type_name=type_name,
                      overwrite=True)


def llama_cpp_model(path: Path, *, n_ctx: int, threads: int = THREADS,
                    logits_all: bool = False, f32_cache: bool = False) -> Any:
    """A ``llama_cpp.Llama`` on ``path`` with ``threads`` threads for prompt and decode.

    ``f32_cache`` keeps keys and values in float32 (parity); llama.cpp's default, used for
    speed, is a float16 KV cache, which alone moves logits by ~1e-3."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    cache = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) \
        if f32_cache else {}
    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    # llama.cpp's weight repacking ("extra buffer types") segfaults on q8_0 models in this
    # build (GGML_NATIVE on an AMX CPU), with llama.cpp's own convert_hf_to_gguf.py files too.
    llama_module.llama_cpp.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all,
                               n_batch=max(n_ctx, 32), verbose=False, **cache)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


def llama_cpp_greedy(llm: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation by llama.cpp's own sampler (temperature 0), ignoring end tokens."""
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) == new_tokens:
            break
    return out


def llama_cpp_tokens_per_s(llm: Any, prompt: list[int], new_tokens: int) -> float:
    """New tokens per second of one greedy run (prompt evaluation included, as ours)."""
    start = time.perf_counter()
    llama_cpp_greedy(llm, prompt, new_tokens)
    return new_tokens / (time.perf_counter() - start)


def llama_cpp_logits(llm: Any, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of one forward pass over ``ids`` (needs logits_all=True)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


@torch.no_grad()
def ours_greedy(model: torch.nn.Module, prompt: list[int], new_tokens: int) -> list[int]:
    from scratchllm.generate import generate

    out = generate(model, torch.tensor([prompt]), new_tokens)
    return out[0, len(prompt):].tolist()


def parity(name: str, model: torch.nn.Module, folder: Path, prompt: list[int]) -> dict:
    """Greedy tokens and logits of llama.cpp on the f32 and q8_0 exports against ours."""
    n_ctx = len(prompt) + PARITY_TOKENS + 8
    ours = ours_greedy(model, prompt, PARITY_TOKENS)
    ids = prompt + ours
    with torch.no_grad():
        our_logits = model(torch.tensor([ids]))[0].float().numpy()
    row: dict = {"model": name}
    for type_name in ("f32", "q8_0"):
        path = export_gguf_file(model, folder / f"{name}-{type_name}.gguf", type_name)
        llm = llama_cpp_model(path, n_ctx=n_ctx, logits_all=True, f32_cache=True)
        theirs = llama_cpp_greedy(llm, prompt, PARITY_TOKENS)
        agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        row[f"{type_name}_same_tokens"] = theirs == ours
        row[f"{type_name}_agree_prefix"] = agree
        diff = np.abs(llama_cpp_logits(llm, ids) - our_logits)
        row[f"{type_name}_max_logit_diff"] = float(diff.max())
        row[f"{type_name}_logit_scale"] = float(np.abs(our_logits).max())
        del llm
    return row


def tiny_models() -> dict[str, torch.nn.Module]:
    """Random tiny models of each exported family, GPT-2's 50,257-token vocabulary."""
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.model.llama import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    gpt = GPTModel(GPTConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=2,
                             drop_rate=0.0, qkv_bias=True))
    llama = LlamaModel(LlamaConfig(vocab_size=50257, context_length=256, emb_dim=64,
                                   n_heads=4, n_kv_groups=2, n_layers=2, hidden_dim=128,
                                   rope_base=500_000.0, tie_weights=True,
                                   rope_scaling=dict(factor=8.0, original_context_length=32)))
    qwen3 = LlamaModel(LlamaConfig(vocab_size=50257, context_length=256, emb_dim=64,
                                   n_heads=4, n_kv_groups=2, n_layers=2, hidden_dim=128,
                                   head_dim=32, qk_norm=True, rms_norm_eps=1e-6,
                                   rope_base=1_000_000.0, tie_weights=True))
    return {"tiny-gpt2": gpt.eval(), "tiny-llama3": llama.eval(), "tiny-qwen3": qwen3.eval()}


def gpt2_small() -> torch.nn.Module:
    from scratchllm.model import GPTConfig, GPTModel

    torch.manual_seed(123)
    return GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()


def speed(model: torch.nn.Module, folder: Path, prompt: list[int], new_tokens: int,
          rounds: int) -> dict:
    """Tokens/s: scratchllm fp32 and llama.cpp f32/q8_0 on the same weights, alternated."""
    from scratchllm.generate import generate

    llms = {}
    for t in ("f32", "q8_0"):
        path = folder / f"gpt2-124M-{t}.gguf"  # written by the parity run, if it ran
        if not path.exists():
            export_gguf_file(model, path, t)
        llms[t] = llama_cpp_model(path, n_ctx=len(prompt) + new_tokens + 8)
    batch = torch.tensor([prompt])
    with torch.no_grad():
        generate(model, batch, 8)  # warm-up
    for llm in llms.values():
        llama_cpp_greedy(llm, prompt, 8)
    best = {"scratchllm_fp32": 0.0, "llama_cpp_f32": 0.0, "llama_cpp_q8_0": 0.0}
    for _ in range(rounds):
        start = time.perf_counter()
        with torch.no_grad():
            generate(model, batch, new_tokens)
        best["scratchllm_fp32"] = max(best["scratchllm_fp32"],
                                      new_tokens / (time.perf_counter() - start))
        for t, llm in llms.items():
            best[f"llama_cpp_{t}"] = max(best[f"llama_cpp_{t}"],
                                         llama_cpp_tokens_per_s(llm, prompt, new_tokens))
        print("  ... " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()), file=sys.stderr,
              flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 new tokens, one round")
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python (it builds "
                 "llama.cpp from source, ~5+ minutes on 2 cores)")
    new_tokens, rounds = (50, 1) if args.quick else (NEW_TOKENS, 3)
    print(f"machine: {machine_summary()}")
    print(f"cpu flags: {cpu_flags()}")
    print(f"llama-cpp-python {llama_cpp.__version__}; {args.threads} threads for both")
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, 50257, (PROMPT_LEN,), generator=gen).tolist()
    with tempfile.TemporaryDirectory(prefix="gguf-parity-") as tmp:
        folder = Path(tmp)
        models = {**tiny_models(), "gpt2-124M": gpt2_small()}
        print(f"\nparity: prompt {PROMPT_LEN} random ids + {PARITY_TOKENS} greedy tokens")
        print(f"{'model':<12} {'f32 tokens':>11} {'f32 max|dlogit|':>16} {'q8_0 tokens':>12} "
              f"{'q8_0 max|dlogit|':>17} {'max|logit|':>11}")
        for name, model in models.items():
            r = parity(name, model, folder, prompt)
            print(f"{name:<12} {'same' if r['f32_same_tokens'] else r['f32_agree_prefix']:>11} "
                  f"{r['f32_max_logit_diff']:>16.2e} "
                  f"{'same' if r['q8_0_same_tokens'] else r['q8_0_agree_prefix']:>12} "
                  f"{r['q8_0_max_logit_diff']:>17.2e} {r['f32_logit_scale']:>11.2f}",
                  flush=True)
        print(f"\nspeed: gpt2-124M, batch 1, {PROMPT_LEN}-token prompt, {new_tokens} new tokens, "
              f"best of {rounds}")
        best = speed(models["gpt2-124M"], folder, prompt, new_tokens, rounds)
    for key, value in best.items():
        print(f"{key:<16} {value:7.1f} tokens/s")
    print(f"llama.cpp q8_0 / scratchllm fp32: {best['llama_cpp_q8_0'] / best['scratchllm_fp32']:.2f}")
    ours, peer = best["scratchllm_fp32"], best["llama_cpp_f32"]
    print(f"scratchllm fp32 decode: {ours:.1f} tok/s (llama.cpp f32: {peer:.1f} tok/s, "
          f"ratio {ours / peer:.2f})")


if __name__ == "__main__":
    main()
