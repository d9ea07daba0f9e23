"""Decoding on a CUDA GPU: scratchllm's KV-cached greedy decoding beside transformers.

On a GPU a batch-1 decode step of a 124M model is bound by kernel launches, not by bytes,
so this measures what a user of ``generate --device cuda`` gets, in one run, alternating
contenders round by round (best of the rounds kept):

1. GPT-2 124M shape (random weights), batch 1, a 10-token prompt, 200 new greedy tokens:
   scratchllm and transformers on the same weights, fp32 (TF32 off) and bf16, plus the
   fraction of greedy tokens each agrees with ours in fp32.
2. Batched: 8 prompts of different lengths through ``generate_batch`` against one prompt,
   as aggregate new tokens/s (bf16).
3. Prefill: time to first token of a 1,024-token prompt on the Llama-3.2-1B shape (random
   weights, bf16), ours against transformers' ``LlamaForCausalLM``.

Run on a GPU machine: ``python benchmarks/cuda_decode.py``; the last line reads
``cuda_decode_tok_s_bf16: X (transformers bf16: Y, ratio R)``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_generate import _hf_copy  # noqa: E402
from common import machine_summary, time_call  # noqa: E402

from scratchllm.generate import generate, generate_batch  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel  # noqa: E402

PROMPT_LEN, SEED = 10, 123
BATCH_LENGTHS = (10, 5, 17, 8, 12, 3, 20, 14)


def _alternate(contenders: dict[str, Callable[[], object]], rounds: int,
               device: torch.device) -> dict[str, float]:
    """Best seconds of each contender (GPU work included), one call each per round, in turn."""
    best = {name: math.inf for name in contenders}
    for fn in contenders.values():
        fn()  # warm-up: kernel choice, cuBLAS handles, caching allocator
    for r in range(rounds):
        for name, fn in contenders.items():
            best[name] = min(best[name], time_call(fn, device))
            print(f"  ... round {r + 1}/{rounds} {name}: {best[name]:.3f} s best",
                  file=sys.stderr, flush=True)
    return best


def single_stream(rounds: int, new_tokens: int, device: torch.device) -> dict:
    torch.manual_seed(SEED)
    fp32 = GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()
    hf32 = _hf_copy(fp32).to(device)
    hf16 = copy.deepcopy(hf32).to(torch.bfloat16)
    fp32 = fp32.to(device)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    prompt = torch.randint(0, fp32.config.vocab_size, (1, PROMPT_LEN),
                           generator=torch.Generator().manual_seed(SEED)).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    def hf(model):
        def run():
            with torch.no_grad():
                return model.generate(prompt, **kwargs)
        return run

    contenders = {"scratchllm fp32": lambda: generate(fp32, prompt, new_tokens),
                  "transformers fp32": hf(hf32),
                  "scratchllm bf16": lambda: generate(bf16, prompt, new_tokens),
                  "transformers bf16": hf(hf16)}
    best = _alternate(contenders, rounds, device)
    reference = generate(fp32, prompt, new_tokens)[0, PROMPT_LEN:]
    outputs = {"scratchllm bf16": generate(bf16, prompt, new_tokens)[0, PROMPT_LEN:],
               "transformers fp32": hf(hf32)()[0, PROMPT_LEN:],
               "transformers bf16": hf(hf16)()[0, PROMPT_LEN:]}
    same = {k: float((v == reference).float().mean()) for k, v in outputs.items()}
    return {"tok_s": {k: new_tokens / s for k, s in best.items()}, "same_tokens": same}


def batched(rounds: int, new_tokens: int, device: torch.device) -> dict:
    torch.manual_seed(SEED)
    model = GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                      qkv_bias=True)).eval().to(device, torch.bfloat16)
    gen = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in BATCH_LENGTHS]
    one = torch.tensor([prompts[0]], device=device)
    best = _alternate({"1 prompt": lambda: generate(model, one, new_tokens),
                       "8 prompts": lambda: generate_batch(model, prompts, new_tokens)}, rounds,
                      device)
    single = new_tokens / best["1 prompt"]
    many = len(prompts) * new_tokens / best["8 prompts"]
    return {"1 prompt": single, "8 prompts": many, "ratio": many / single}


def prefill(device: torch.device, prompt_len: int = 1024, repeats: int = 3) -> dict:
    import transformers

    from scratchllm.weights.hf_llama import config_to_hf

    config = LlamaConfig.preset("llama3.2-1b", dtype="bfloat16", context_length=8192)
    ids = torch.randint(0, config.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(SEED)).to(device)
    torch.manual_seed(SEED)
    with torch.device(device):
        ours = LlamaModel(config).to(torch.bfloat16).eval()
    ours.reset_rope_buffers(device)

    def ours_first():
        with torch.inference_mode():
            cache = ours.new_cache(ids.shape[1] + 1)
            return ours(ids, cache=cache, last_only=True)[:, -1].argmax(-1)

    hf_config = transformers.LlamaConfig(**config_to_hf(config))
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(hf_config).to(torch.bfloat16).eval()

    def hf_first():
        with torch.inference_mode():
            return hf(ids, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)

    best = _alternate({"scratchllm": ours_first, "transformers": hf_first}, repeats, device)
    return {k: v * 1000 for k, v in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_decode.py needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for both contenders
    print(f"machine: {machine_summary(device)}")
    single = single_stream(args.rounds, args.new_tokens, device)
    many = batched(args.rounds, args.new_tokens, device)
    first = prefill(device)
    print(f"\nbatch 1, {PROMPT_LEN}-token prompt, {args.new_tokens} new greedy tokens, "
          f"GPT-2 124M shape:")
    for name, rate in single["tok_s"].items():
        print(f"  {name:<20} {rate:8.1f} tok/s")
    print("  greedy tokens equal to scratchllm fp32: "
          + ", ".join(f"{k} {v:.2f}" for k, v in single["same_tokens"].items()))
    print(f"batched, 8 prompts (lengths {', '.join(map(str, BATCH_LENGTHS))}), bf16: "
          f"{many['8 prompts']:.1f} tok/s aggregate vs {many['1 prompt']:.1f} for one prompt "
          f"({many['ratio']:.2f}x)")
    print(f"prefill, 1,024 tokens, Llama-3.2-1B shape, bf16: scratchllm "
          f"{first['scratchllm']:.1f} ms, transformers {first['transformers']:.1f} ms "
          f"(ratio {first['transformers'] / first['scratchllm']:.2f})")
    for precision in ("fp32", "bf16"):
        ours = single["tok_s"][f"scratchllm {precision}"]
        peer = single["tok_s"][f"transformers {precision}"]
        print(f"cuda_decode_tok_s_{precision}: {ours:.1f} (transformers {precision}: "
              f"{peer:.1f}, ratio {ours / peer:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
