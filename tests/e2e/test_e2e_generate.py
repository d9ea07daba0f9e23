"""``scratchllm generate`` on every kind of model a user can point it at.

The reference is ``transformers``' greedy ``generate`` on the same Hugging Face directory and
prompt, decoded: the command must print the prompt followed by exactly that continuation.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

from e2e_support import HUB_REPO, PROMPT, generated, hf_greedy

NEW = 12  # tokens to generate


@pytest.fixture(scope="module")
def outputs(cli_many, gpt2_hf_dirs, llama_hf_dir, qwen3_hf_dir, pretrain_run, hub_snapshot):
    """``generate`` on each kind of source, two commands at a time: {name: printed text}."""
    sources = {**{f"gpt2-{k}": v for k, v in gpt2_hf_dirs.items()}, "llama": llama_hf_dir,
               "qwen3": qwen3_hf_dir, "run": pretrain_run, "run-latest": pretrain_run / "latest",
               "hub": HUB_REPO}
    procs = cli_many([["generate", "--model", source, "--max-new-tokens", NEW, PROMPT]
                      for source in sources.values()])
    return {name: generated(proc) for name, proc in zip(sources, procs)}


@pytest.mark.parametrize("layout", ["vocab-merges", "tokenizer-json"])
def test_generate_hf_gpt2_matches_transformers(outputs, gpt2_hf_dirs, layout):
    ours = outputs[f"gpt2-{layout}"]
    assert ours == hf_greedy(gpt2_hf_dirs[layout], PROMPT, NEW)
    assert len(ours) > len(PROMPT)


def test_generate_qwen3_matches_transformers(outputs, qwen3_hf_dir):
    assert outputs["qwen3"] == hf_greedy(qwen3_hf_dir, PROMPT, NEW)


def test_generate_llama_matches_transformers(outputs, llama_hf_dir):
    # transformers puts <|begin_of_text|> before the prompt; so must scratchllm
    assert outputs["llama"] == hf_greedy(llama_hf_dir, PROMPT, NEW)


def test_generate_from_run_dir_and_its_latest(outputs, exported_run):
    assert outputs["run"] == outputs["run-latest"]
    # the same weights exported to HF format: transformers continues the prompt identically
    assert outputs["run"] == hf_greedy(exported_run, PROMPT, NEW)


def test_generate_hub_name_from_local_cache_offline(cli, outputs, hub_snapshot, gpt2_hf_dir):
    assert outputs["hub"] == hf_greedy(gpt2_hf_dir, PROMPT, NEW)
    # ... and `download` of a cached name offline just prints where it is
    where = cli(["download", HUB_REPO]).stdout.strip()
    assert where == str(hub_snapshot)


def test_download_offline_says_what_to_do(cli_error, hf_cache):
    line = cli_error(["download", "gpt2-medium"], "download", spawn=True)  # a fresh interpreter
    assert "openai-community/gpt2-medium" in line and "HF_HUB_OFFLINE" in line
    assert "config.json" in line  # it says which files to place by hand
    assert not any(hf_cache.glob("models--openai-community--gpt2-medium/snapshots/*/*"))


def test_generate_unknown_hub_name_offline_is_one_line(cli_error, hub_snapshot):
    line = cli_error(["generate", "--model", "e2e-owner/not-cached", PROMPT], "generate")
    assert "e2e-owner/not-cached" in line and "HF_HUB_OFFLINE" in line


def test_readme_sampling_flags_repeat_with_a_seed(cli_many, gpt2_hf_dirs):
    """README: ``generate ... --temperature 0.8 --top-k 40``; with --seed the text repeats and
    is the library's sampled continuation with the same settings."""
    import torch

    from scratchllm.generate import generate
    from scratchllm.weights.auto import open_model

    directory = gpt2_hf_dirs["tokenizer-json"]
    sample = ["generate", "--model", directory, "--max-new-tokens", NEW, "--temperature", "0.8",
              "--top-k", "40", "--seed"]
    first, again, other = (generated(p) for p in cli_many(
        [[*sample, "1", PROMPT], [*sample, "1", PROMPT], [*sample, "2", PROMPT]]))
    assert first == again and first != other
    loaded = open_model(directory)
    ids = loaded.tokenizer.encode_prompt(PROMPT)
    with torch.no_grad():
        out = generate(loaded.model, ids, NEW, temperature=0.8, top_k=40, seed=1,
                       eos_id=list(loaded.eos_ids))
    assert first == PROMPT + loaded.tokenizer.decode(out[len(ids):])


def test_readme_dtype_and_stop_flags(cli, llama_hf_dir):
    """README: ``generate ... --dtype bf16 --stop "Q:"``: the text ends where the stop string
    begins (even across tokens), and the stop string is not printed."""
    base = ["generate", "--model", llama_hf_dir, "--max-new-tokens", NEW, "--dtype", "bf16"]
    full = generated(cli([*base, PROMPT]))
    continuation = full[len(PROMPT):]
    assert full.startswith(PROMPT) and len(continuation.strip()) >= 6, full
    stop = continuation[len(continuation) // 2:][:3]  # a piece from the middle
    assert stop.strip()
    cut = generated(cli([*base, "--stop", stop, PROMPT]))
    assert cut == PROMPT + continuation[:continuation.index(stop)]
