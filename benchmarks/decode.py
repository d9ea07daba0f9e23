"""Decoding speed and quality: fp32, bf16 and int8 weights, batched decoding, prefill.

Decoding one token reads every weight once, so tokens/s follow bytes per token. In one run,
2 torch threads, alternating contenders round by round (best of the rounds kept, since other
jobs only ever slow a run down):

1. GPT-2 124M shape (random weights, GPT-2's layout), batch 1, a 10-token prompt, 200 new
   greedy tokens: scratchllm fp32, bf16 and int8 (``--quantize int8``), each laid out as
   ``scratchllm generate`` runs it (``prepare_decoding(model, 1)``, the call
   ``open_model(inference_only=True)`` makes: fp32 weights transposed, bf16 ones prepacked),
   and fp32 in ``nn.Linear``'s plain (out, in) layout, beside transformers fp32 on the same
   weights, and llama.cpp q8_0 on a GGUF export of them when ``llama_cpp`` is importable
   (benchmarks/gguf_parity.py builds on it). Ratios are against ours fp32 as generate runs it.
   "compiled" rows are ``generate --compile``: the same layouts with the one-token decode
   step compiled by inductor at load (``prepare_decoding(model, 1, compile=True)``); their
   compile times and the tokens each needs to pay it back are printed under the table.
2. Batched decoding: 8 prompts of different lengths through ``generate_batch`` against one
   prompt through ``generate``, as aggregate new tokens/s (fp32, int8, bf16). Each round
   times the 1-prompt and the 8-prompt run back to back and gives its own ratio; the median
   of the rounds is reported, beside the single-stream fp32 figure (the machine drifts).
3. Quality: a byte-level GPT trained here for a few hundred steps on tiny Shakespeare;
   int8's greedy-token agreement with fp32 over a fixed prompt set (teacher forced), and the
   held-out perplexity change (target <= 1%), in blocks (prefill's many-row path) and one
   token per call (the one-row path every decode step takes).
4. Prefill: time to first token of a 1,024-token prompt on the Llama-3.2-1B shape (random
   weights, fp32), ours against transformers' ``LlamaForCausalLM``.

The CPU's flags that decide bf16 and int8 speed are printed first. Targets (issue 11):
int8 >= 2.5x our fp32 tokens/s; bf16 >= 1.6x on a CPU with AVX512-BF16/AMX (its linear
layers prepacked for oneDNN, as ``generate --dtype bf16`` runs them); 8 prompts >= 5x one
prompt's aggregate tokens/s.
Run: ``nice -n 5 python benchmarks/decode.py [--quick] [--skip-prefill]``; the last line reads
``int8_decode_tok_s: X (scratchllm fp32: Y, ratio R)``, after ``int8_compiled_decode_tok_s``
against llama.cpp q8_0 and against our (eager) fp32. ``--only single`` runs part 1 alone;
``--only batched`` runs part 2 alone
(``--batched-kinds`` picks its kinds); its last line reads
``batched_fp32_tok_s: X (one prompt: Y, ratio R)``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_average, machine_summary  # noqa: E402

from scratchllm.generate import generate, generate_batch  # noqa: E402
from scratchllm.generate.loop import decode_steps, left_pad  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel  # noqa: E402
from scratchllm.model.quantize import cpu_flags, quantize_model  # noqa: E402
from scratchllm.model.cpu_linear import packed_unavailable  # noqa: E402
from scratchllm.model.decode_layout import float32_one_row_packed, prepare_decoding  # noqa: E402
from scratchllm.model.compiled_decode import compile_decoding  # noqa: E402

PROMPT_LEN, NEW_TOKENS, THREADS, SEED = 10, 200, 2, 123
BATCH_LENGTHS = (10, 5, 17, 8, 12, 3, 20, 14)
BATCHED_KINDS = ("fp32", "int8", "bf16", "fp32 one-row layout")
COMPILED_KINDS = ("fp32", "bf16", "int8")  # generate --compile (batched decoding stays eager)
SHAKESPEARE = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"


def _progress(text: str) -> None:
    print(f"  ... {text}", file=sys.stderr, flush=True)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best seconds of each contender, one call each per round, in turn."""
    best = {name: math.inf for name in contenders}
    for fn in contenders.values():
        fn()  # warm-up: thread pool, kernel choice, packed weights
    for r in range(rounds):
        for name, fn in contenders.items():
            best[name] = min(best[name], _seconds(fn))
            _progress(f"round {r + 1}/{rounds} {name}: {best[name]:.2f} s best")
    return best


def _paired(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]],
            rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Seconds of each (a, b) pair, one call of each per round, back to back.

    A ratio is only as good as the two timings it divides, and this machine's speed drifts
    within a run (the same GEMV 124 us at one time, 213 us minutes later): the best of each
    contender over the whole run could take its 1-prompt and 8-prompt figures minutes
    apart. Here each round's a and b run next to each other, in ABBA order (b first on odd
    rounds) so that a steady drift does not favour either, and each round gives its own
    ratio; the caller reports every round's and their median."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
    for a, b in pairs.values():
        a(), b()  # warm-up: thread pool, kernel choice, packed weights
    for r in range(rounds):
        for name, (a, b) in pairs.items():
            if r % 2:
                tb = _seconds(b)
                ta = _seconds(a)
            else:
                ta = _seconds(a)
                tb = _seconds(b)
            times[name].append((ta, tb))
            _progress(f"round {r + 1}/{rounds} {name}: {ta:.2f} s / {tb:.2f} s")
    return times


def gpt2_small() -> GPTModel:
    torch.manual_seed(SEED)
    return GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()


def _llama_cpp_peer(model: GPTModel, folder: Path, prompt: list[int], new_tokens: int):
    """A callable running llama.cpp q8_0 on ``model``'s GGUF export, or the reason it can't."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama_cpp is not importable here (llama-cpp-python not installed)"
    from gguf_parity import export_gguf_file, llama_cpp_greedy, llama_cpp_model

    path = export_gguf_file(model, folder / "gpt2-q8_0.gguf", "q8_0")
    llm = llama_cpp_model(path, n_ctx=PROMPT_LEN + new_tokens + 8,
                          threads=torch.get_num_threads())
    return lambda: llama_cpp_greedy(llm, prompt, new_tokens)


def single_stream(rounds: int, new_tokens: int) -> dict:
    from bench_generate import _hf_copy

    fp32 = gpt2_small()
    prompt = torch.randint(0, fp32.config.vocab_size, (1, PROMPT_LEN),
                           generator=torch.Generator().manual_seed(SEED))
    # What ``scratchllm generate`` runs for each: open_model(inference_only=True) ends with
    # prepare_decoding(model, 1), which transposes fp32 weights and packs bf16 ones for oneDNN
    # where the CPU has bf16 instructions; int8 is quantized first, as --quantize int8 does.
    ours = copy.deepcopy(fp32)
    prepare_decoding(ours, 1)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    bf16_packed = prepare_decoding(bf16, 1)
    int8 = quantize_model(copy.deepcopy(fp32), "int8")
    prepare_decoding(int8, 1)
    # ``generate --compile``: the same layouts, the one-token step compiled at load time
    compiled, compile_s = {}, {}
    for kind in COMPILED_KINDS:
        model = copy.deepcopy(fp32)
        if kind == "bf16":
            model = model.to(torch.bfloat16)
        elif kind == "int8":
            quantize_model(model, "int8")
        prepare_decoding(model, 1, compile=True)
        compiled[kind], compile_s[kind] = model, model.decode_compile_seconds
        _progress(f"compiled {kind}: {compile_s[kind]:.1f} s")
    hf = _hf_copy(fp32)
    hf_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    def hf_run():
        with torch.no_grad():
            return hf.generate(prompt, **hf_kwargs)

    contenders = {"scratchllm fp32": lambda: generate(ours, prompt, new_tokens),
                  "scratchllm fp32, plain (out,in)": lambda: generate(fp32, prompt, new_tokens),
                  "scratchllm bf16": lambda: generate(bf16, prompt, new_tokens),
                  "scratchllm int8": lambda: generate(int8, prompt, new_tokens),
                  **{f"scratchllm {kind} compiled":
                     (lambda m=model: generate(m, prompt, new_tokens))
                     for kind, model in compiled.items()},
                  "transformers fp32": hf_run}
    with tempfile.TemporaryDirectory() as folder:
        peer = _llama_cpp_peer(fp32, Path(folder), prompt[0].tolist(), new_tokens)
        if callable(peer):
            contenders["llama.cpp q8_0"] = peer
        best = _alternate(contenders, rounds)
    reference = generate(ours, prompt, new_tokens)[0, PROMPT_LEN:]
    same = {name: float((generate(m, prompt, new_tokens)[0, PROMPT_LEN:] == reference)
                        .float().mean())
            for name, m in (("fp32 plain (out,in)", fp32), ("bf16", bf16), ("int8", int8),
                            *((f"{kind} compiled", m) for kind, m in compiled.items()))}
    same["transformers"] = float((hf_run()[0, PROMPT_LEN:] == reference).float().mean())
    return {"tok_s": {name: new_tokens / s for name, s in best.items()},
            "llama_cpp": None if callable(peer) else peer, "same_tokens": same,
            "bf16_packed": bf16_packed, "compile_s": compile_s}


def print_compiled(single: dict) -> None:
    """Compile times (the warm-up at load) and after how many tokens each compiled kind has
    paid its compile back against the same kind eager."""
    tok_s = single["tok_s"]
    parts = []
    for kind, seconds in single["compile_s"].items():
        eager, fast = tok_s[f"scratchllm {kind}"], tok_s[f"scratchllm {kind} compiled"]
        saved = 1 / eager - 1 / fast  # seconds per token
        back = f"pays back after {seconds / saved:,.0f} tokens" if saved > 0 else "never pays back"
        parts.append(f"{kind} {seconds:.1f} s ({fast / eager:.2f}x eager, {back})")
    print("compile (once at load, inductor's on-disk cache as this machine had it): "
          + "; ".join(parts))


def batched(rounds: int, new_tokens: int, kinds: tuple[str, ...] = BATCHED_KINDS) -> dict:
    """8 prompts through ``generate_batch`` against one through ``generate``, each model laid
    out by ``prepare_decoding``, as ``open_model(inference_only=True, decode_rows=N)`` does:
    fp32 transposed for one row (generate, chat) and oneDNN-packed for 8 (serve); int8 (fbgemm) and bf16
    (oneDNN-packed, where the CPU has bf16 instructions) the same for any row count. The
    fp32 8 prompts also run on the one-row layout, to show what the packed layout buys.
    ``kinds`` picks which of ``BATCHED_KINDS`` run (``--batched-kinds``)."""
    base = gpt2_small()
    gen = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in BATCH_LENGTHS]
    one_row = copy.deepcopy(base)
    prepare_decoding(one_row, 1)
    eight_rows = copy.deepcopy(base)
    packed = prepare_decoding(eight_rows, len(prompts))
    models = {"fp32": (one_row, eight_rows if packed else one_row)}
    if "int8" in kinds:
        models["int8"] = (quantize_model(copy.deepcopy(base), "int8"),) * 2
        prepare_decoding(models["int8"][0], len(prompts))  # nothing left to lay out: all int8
    bf16 = copy.deepcopy(base).to(torch.bfloat16) if "bf16" in kinds else None
    if bf16 is not None and prepare_decoding(bf16, len(prompts)):  # packed for any row count
        models["bf16"] = (bf16, bf16)
    del base
    singles, logit_gaps = {}, {}
    for name, (alone_model, batch_model) in models.items():  # 8 tokens: a check, not a timing
        alone = [generate(alone_model, p, 8)[len(p):] for p in prompts]
        together = generate_batch(batch_model, prompts, 8)
        singles[name] = sum(a == b for a, b in zip(alone, together))
        logit_gaps[name] = _logit_gap(alone_model, batch_model, prompts, 8)
    # Each kind's 1-prompt and 8-prompt runs are a pair timed back to back every round
    # (``_paired``), so each round's ratio compares two runs at the same machine speed.
    pairs = {}
    for name, (alone_model, batch_model) in models.items():
        pairs[name] = (lambda m=alone_model: generate(m, prompts[0], new_tokens),
                       lambda m=batch_model: generate_batch(m, prompts, new_tokens))
    pairs["fp32 one-row layout"] = (pairs["fp32"][0],
                                     lambda: generate_batch(one_row, prompts, new_tokens))
    pairs = {name: pair for name, pair in pairs.items() if name in kinds}
    times = _paired(pairs, rounds)
    runs = {name: [(new_tokens / ta, len(prompts) * new_tokens / tb) for ta, tb in pair]
            for name, pair in times.items()}
    return {"runs": runs, "rows_equal_alone": singles, "logit_gap": logit_gaps,
            "kinds": list(models), "fp32_packed": packed}


def _logit_gap(alone_model, batch_model, prompts: list[list[int]], steps: int) -> float:
    """Largest |logit difference| between each prompt decoded alone and in the padded batch,
    over ``steps`` greedy steps, relative to the largest |logit|. The random tied-weight
    model repeats each prompt's last token forever (the tied head scores a token's own
    embedding highest), so equal tokens alone prove little; logits this close do."""
    def logits_of(model, ids, mask):
        seen = []

        def pick(logits):
            seen.append(logits.float())
            return torch.max(logits, dim=-1).indices

        for _ in decode_steps(model, ids, steps, pick, attention_mask=mask):
            pass
        return torch.stack(seen, dim=1)  # (B, steps, vocab)

    ids, mask = left_pad(prompts, torch.device("cpu"))
    together = logits_of(batch_model, ids, mask)
    alone = torch.cat([logits_of(alone_model, torch.tensor([p]), None) for p in prompts])
    return float((together - alone).abs().max() / alone.abs().max())


def batched_summary(runs: list[tuple[float, float]]) -> tuple[float, float, float, list]:
    """(median 1-prompt tok/s, median 8-prompt tok/s, median per-round ratio, ratios)."""
    ratios = [eight / one for one, eight in runs]
    return (statistics.median(one for one, _ in runs),
            statistics.median(eight for _, eight in runs), statistics.median(ratios), ratios)


def print_batched(batch: dict, rounds: int, new_tokens: int) -> None:
    """The batched part's lines: each kind's 1-prompt and 8-prompt tokens/s and ratios."""
    runs = batch["runs"]
    print(f"\nbatched decoding, prompts of {list(BATCH_LENGTHS)} tokens, {new_tokens} new "
          "each (aggregate new tokens/s, prefill included); 1 prompt and 8 prompts timed back "
          "to back each round, ratio = 8 prompts / 1 prompt of the same round, median of "
          f"{rounds} rounds")
    for kind in batch["kinds"]:
        one, eight, ratio, ratios = batched_summary(runs[kind])
        print(f"  {kind}: 1 prompt {one:.1f}, 8 prompts {eight:.1f}, ratio {ratio:.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); rows equal to each prompt "
              f"alone: {batch['rows_equal_alone'][kind]}/8, logits within "
              f"{batch['logit_gap'][kind]:.1e} of alone (relative)")
    if "fp32 one-row layout" not in runs:
        return
    one, plain, ratio, ratios = batched_summary(runs["fp32 one-row layout"])
    packed = (f"{batch['fp32_packed']} linear layers packed for 8 rows" if batch["fp32_packed"]
              else "oneDNN's prepacked fp32 linear is unavailable: "
              f"{packed_unavailable(torch.float32)}")
    layout = "packed for 1 row" if float32_one_row_packed() else "transposed"
    print(f"  fp32 8 prompts on the one-row ({layout}) layout: {plain:.1f}, ratio "
          f"{ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); fp32 8 prompts "
          f"above: {packed}")


def quality(steps: int) -> dict:
    """Train a byte-level GPT briefly; int8 vs fp32 greedy agreement and perplexity."""
    data = SHAKESPEARE.read_bytes()
    split = int(len(data) * 0.9)
    train = torch.tensor(list(data[:split]), dtype=torch.long)
    held_out = torch.tensor(list(data[split:split + 65_537]), dtype=torch.long)
    context = 128
    torch.manual_seed(SEED)
    model = GPTModel(GPTConfig(vocab_size=256, context_length=context, emb_dim=192, n_heads=6,
                               n_layers=4, drop_rate=0.0, qkv_bias=True, tie_weights=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(train) - context - 1, (16,), generator=gen)
        x = torch.stack([train[s:s + context] for s in starts])
        y = torch.stack([train[s + 1:s + context + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 99:
            _progress(f"training step {step + 1}/{steps}: loss {loss.item():.3f}")
    train_s = time.perf_counter() - start
    model.eval()
    int8 = quantize_model(copy.deepcopy(model), "int8")
    # The same int8 weights with one 7-bit activation scale per call (PyTorch's dynamic int8,
    # what --quantize int8 ran before), and ours with the output head left in float32: where
    # the perplexity cost comes from.
    per_tensor = _torch_dynamic_int8(copy.deepcopy(model))
    head_fp32 = copy.deepcopy(model)
    head = head_fp32.out_head
    quantize_model(head_fp32, "int8")
    head_fp32.out_head = head

    def perplexity(m) -> float:
        usable = (len(held_out) - 1) // context * context
        x = held_out[:usable].view(-1, context)
        y = held_out[1:usable + 1].view(-1, context)
        with torch.inference_mode():
            losses = [F.cross_entropy(m(xb).flatten(0, 1), yb.flatten(), reduction="sum")
                      for xb, yb in zip(x.split(32), y.split(32))]
        return math.exp(float(sum(losses)) / y.numel())

    def one_row_logits(m, ids: torch.Tensor) -> torch.Tensor:
        """Logits of ``ids`` fed one token per call through the KV cache: the one-row path
        every decode step of generate/chat takes (the blocks above take the many-row one)."""
        cache = m.new_cache(len(ids))
        with torch.inference_mode():
            return torch.cat([m(ids[None, i:i + 1], cache=cache)[0] for i in range(len(ids))])

    agree = {"int8": 0, "per_tensor": 0, "int8_one_row": 0}
    total = 0
    for start_at in range(0, 64 * 500, 500):  # 64 fixed prompts from the held-out text
        prompt = held_out[start_at:start_at + 16]
        ours = generate(model, prompt, 32)
        with torch.inference_mode():
            a = model(ours[None, :-1]).argmax(-1)[0, 15:]
            for name, m in (("int8", int8), ("per_tensor", per_tensor)):
                agree[name] += int((m(ours[None, :-1]).argmax(-1)[0, 15:] == a).sum())
        agree["int8_one_row"] += int((one_row_logits(int8, ours[:-1]).argmax(-1)[15:] == a).sum())
        total += len(a)
    base = perplexity(model)
    ppl = {name: perplexity(m) for name, m in
           (("int8", int8), ("per_tensor", per_tensor), ("head_fp32", head_fp32))}
    # one token per call over the first 16 KiB (128 windows of 128: 16k one-row steps per model)
    windows = held_out[:128 * context + 1]
    nll = {}
    int8_compiled = copy.deepcopy(int8)  # generate --quantize int8 --compile: the same path
    compile_decoding(int8_compiled)
    for name, m in (("fp32", model), ("int8", int8), ("int8 compiled", int8_compiled)):
        nll[name] = sum(float(F.cross_entropy(one_row_logits(m, windows[i:i + context]),
                                              windows[i + 1:i + context + 1], reduction="sum"))
                        for i in range(0, 128 * context, context))
    one_row = {name: math.exp(v / (128 * context)) for name, v in nll.items()}
    return {"steps": steps, "train_s": train_s, "ppl_fp32": base, "ppl_int8": ppl["int8"],
            "ppl_delta_pct": (ppl["int8"] / base - 1) * 100, "agree": agree["int8"],
            "total": total, "agree_per_tensor": agree["per_tensor"],
            "agree_one_row": agree["int8_one_row"], "one_row": one_row,
            "one_row_delta_pct": (one_row["int8"] / one_row["fp32"] - 1) * 100,
            "compiled_delta_pct": (one_row["int8 compiled"] / one_row["fp32"] - 1) * 100,
            "delta_pct": {name: (value / base - 1) * 100 for name, value in ppl.items()}}


def _torch_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's own dynamic int8 (per-channel weights, one 7-bit activation scale per call)."""
    import warnings

    with warnings.catch_warnings():  # the torch.ao eager API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def prefill(prompt_len: int = 1024, preset: str = "llama3.2-1b", repeats: int = 1,
            **overrides) -> dict:
    """Time to first token on the Llama-3.2-1B shape, ours (laid out as ``generate`` opens
    it) then transformers (one model in memory at a time: 5 GB each in fp32), after a
    32-token warm-up; best of ``repeats``."""
    import transformers

    from scratchllm.weights.hf_llama import config_to_hf

    config = LlamaConfig.preset(preset, **{"dtype": "float32", "context_length": 8192,
                                           **overrides})
    ids = torch.randint(0, config.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(SEED))
    result = {}
    with torch.device("meta"):
        ours = LlamaModel(config)
    ours = ours.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.02)
    ours.reset_rope_buffers(torch.device("cpu"))
    prepare_decoding(ours, 1)  # as generate opens a model (packed float32 layers on AMD CPUs)

    def ours_first(ids=ids):
        with torch.inference_mode():
            cache = ours.new_cache(ids.shape[1] + 1)
            return ours(ids, cache=cache, last_only=True)[:, -1].argmax(-1)

    ours_first(ids[:, :32])
    result["scratchllm"] = min(_seconds(ours_first) for _ in range(repeats))
    _progress(f"prefill scratchllm: {result['scratchllm']:.2f} s")
    del ours
    gc.collect()
    hf_config = transformers.LlamaConfig(**config_to_hf(config))
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_config)
    hf = hf.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.02)
    # to_empty left the rotary tables uninitialised: build that module again, for real
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_config)

    def hf_first(ids=ids):
        with torch.inference_mode():
            return hf(ids, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)

    hf_first(ids[:, :32])
    result["transformers"] = min(_seconds(hf_first) for _ in range(repeats))
    _progress(f"prefill transformers: {result['transformers']:.2f} s")
    del hf
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="50 new tokens, 2 rounds, 200 training steps (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (default 2; 1 on a machine other jobs saturate, "
                        "where two threads wait on each other)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"new tokens per decode (default {NEW_TOKENS}; 50 with --quick)")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--skip-prefill", action="store_true",
                        help="leave out the Llama-3.2-1B prefill (10 GB of memory)")
    parser.add_argument("--only", choices=["batched", "single"], default=None,
                        help="run one part only: batched (8 prompts against 1; its last line "
                        "reads batched_fp32_tok_s: X (one prompt: Y, ratio R)) or single "
                        "(the single-stream table, compiled rows included)")
    parser.add_argument("--batched-kinds", default=",".join(BATCHED_KINDS),
                        help="comma-separated kinds the batched part times (default: "
                        f"{','.join(BATCHED_KINDS)})")
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.batched_kinds.split(",") if k.strip())
    if "fp32" not in kinds or not set(kinds) <= set(BATCHED_KINDS):
        parser.error(f"--batched-kinds takes fp32 and any of {', '.join(BATCHED_KINDS)}")
    torch.set_num_threads(args.threads)
    new_tokens = args.new_tokens or (50 if args.quick else NEW_TOKENS)
    rounds = 2 if args.quick else args.rounds
    steps = 200 if args.quick else args.train_steps
    flags = cpu_flags()
    print(f"machine: {machine_summary()}")
    print("cpu flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()))
    print(f"workload: GPT-2 124M shape (random weights), batch 1, {PROMPT_LEN}-token prompt, "
          f"{new_tokens} new greedy tokens, {args.threads} threads, best of {rounds} rounds")
    if args.only == "batched":
        batch = batched(rounds, new_tokens, kinds)
        print_batched(batch, rounds, new_tokens)
        one, eight, ratio, _ = batched_summary(batch["runs"]["fp32"])
        print(f"load average after: {load_average()}")
        print(f"batched_fp32_tok_s: {eight:.1f} (one prompt: {one:.1f}, ratio {ratio:.2f})")
        return

    single = single_stream(rounds, new_tokens)
    fp32 = single["tok_s"]["scratchllm fp32"]
    print(f"\n{'decoder':<34}{'tokens/s':>10}  vs ours fp32 (as generate runs it)")
    for name, tok_s in single["tok_s"].items():
        print(f"{name:<34}{tok_s:>10.1f}{tok_s / fp32:>9.2f}x")
    if single["llama_cpp"]:
        print(f"llama.cpp q8_0: not measured, {single['llama_cpp']}")
    print("bf16 linear layers: " + (f"{single['bf16_packed']} prepacked for oneDNN"
                                    if single["bf16_packed"] else
                                    f"plain bf16 matmul "
                                    f"({packed_unavailable(torch.bfloat16)})"))
    print("greedy tokens equal to ours fp32 (random weights): " + ", ".join(
        f"{k} {v:.0%}" for k, v in single["same_tokens"].items()))
    print_compiled(single)
    if args.only == "single":
        print(f"load average after: {load_average()}")
        print_last_lines(single)
        return

    batch = batched(rounds, new_tokens, kinds)
    print_batched(batch, rounds, new_tokens)
    print(f"  single-stream table above, fp32 (best of its rounds, minutes earlier): "
          f"{fp32:.1f} tok/s; 1 prompt here (median): "
          f"{batched_summary(batch['runs']['fp32'])[0]:.1f}")

    q = quality(steps)
    print(f"\nquality: byte-level GPT (4x192) trained {q['steps']} steps ({q['train_s']:.0f} s) "
          f"on tiny Shakespeare's first 90%; held-out 64 KiB")
    print(f"  perplexity fp32 {q['ppl_fp32']:.3f}, int8 {q['ppl_int8']:.3f} "
          f"({q['ppl_delta_pct']:+.2f}%; target within 1%)")
    print(f"  int8 greedy-token agreement with fp32 (64 prompts x 32 tokens, teacher forced): "
          f"{q['agree']}/{q['total']} ({q['agree'] / q['total']:.1%})")
    d = q["delta_pct"]
    print(f"  where int8's cost comes from: one 7-bit activation scale per call (PyTorch's "
          f"dynamic int8) {d['per_tensor']:+.2f}% (agreement "
          f"{q['agree_per_tensor'] / q['total']:.1%}); ours with the output head in fp32 "
          f"{d['head_fp32']:+.2f}%")
    r = q["one_row"]
    print(f"  one token per call (the decode path: each row alone on its own [min, max] grid), "
          f"first 16 KiB: perplexity fp32 {r['fp32']:.3f}, int8 {r['int8']:.3f} "
          f"({q['one_row_delta_pct']:+.2f}%); agreement {q['agree_one_row']}/{q['total']} "
          f"({q['agree_one_row'] / q['total']:.1%})")
    print(f"  the same, int8 compiled (generate --compile): perplexity "
          f"{r['int8 compiled']:.3f} ({q['compiled_delta_pct']:+.2f}% against fp32)")

    if not args.skip_prefill:
        p = prefill()
        print(f"\nprefill, Llama-3.2-1B shape (fp32, random weights), 1024-token prompt: time to "
              f"first token scratchllm {p['scratchllm']:.2f} s, transformers "
              f"{p['transformers']:.2f} s (ratio {p['transformers'] / p['scratchllm']:.2f}x)")
    print(f"load average after: {load_average()}")
    print_last_lines(single)


def print_last_lines(single: dict) -> None:
    """int8 compiled against llama.cpp q8_0 (when it ran), then the headline last line."""
    tok_s = single["tok_s"]
    fp32, int8 = tok_s["scratchllm fp32"], tok_s["scratchllm int8"]
    fast = tok_s["scratchllm int8 compiled"]
    if "llama.cpp q8_0" in tok_s:
        peer = tok_s["llama.cpp q8_0"]
        print(f"int8_compiled_decode_tok_s: {fast:.1f} (llama.cpp q8_0: {peer:.1f}, "
              f"ratio {fast / peer:.2f})")
    print(f"int8_compiled_decode_tok_s: {fast:.1f} (scratchllm fp32: {fp32:.1f}, "
          f"ratio {fast / fp32:.2f})")
    print(f"int8_decode_tok_s: {int8:.1f} (scratchllm fp32: {fp32:.1f}, ratio {int8 / fp32:.2f})")


if __name__ == "__main__":
    main()
