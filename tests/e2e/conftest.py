"""End-to-end fixtures: the real ``scratchllm`` command line, run as a user runs it, on tiny models.

Every model here is built once per session and is tiny (1-2 layers, 32 wide, a ~300-token
byte-level BPE trained on a page of The Verdict), so a command spends most of its time
starting up. The Hugging Face directories are written by ``transformers`` and
``tokenizers`` themselves, which then serve as the independent reference: what
``transformers`` generates greedily, the loss it computes, the logits it gives.

Commands run as ``python -m scratchllm ...`` with ``HF_HUB_OFFLINE=1``, ``CI`` set and the
Hugging Face cache inside the session's tmp folder, so nothing outside it is read or written.
Each is its own process, forked from a helper that has already imported torch (``e2e_cli``,
``e2e_zygote``); ``SCRATCHLLM_E2E_SPAWN=1`` starts a fresh interpreter for every command.
Tests call them through the ``cli`` and ``cli_error`` fixtures with a literal argv list: the
README test reads those lists to check every command the README shows is exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from e2e_cli import CLI
from e2e_support import (BPE_VOCAB, CONTEXT, HUB_COMMIT, HUB_REPO, LAYERS,
                         LLAMA_SPECIALS, LLAMA_TEMPLATE, WIDTH, corpus_text)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def hf_cache(e2e_root) -> Path:
    """The Hugging Face cache the commands see (HF_HUB_CACHE), inside the session tmp."""
    path = e2e_root / "hf_home" / "hub"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def cli_runner(e2e_root, hf_cache) -> Iterator[CLI]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "OPENAI_", "SCRATCHLLM_"))}
    env.update(HF_HUB_OFFLINE="1", CI="true", HF_HOME=str(hf_cache.parent),
               HF_HUB_CACHE=str(hf_cache), MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
    cwd, scratch = e2e_root / "cwd", e2e_root / "cli-output"
    cwd.mkdir()
    scratch.mkdir()
    runner = CLI(env, cwd, scratch)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def cli(cli_runner) -> Callable[..., subprocess.CompletedProcess]:
    """``cli([...])``: run a command that must succeed; returns the CompletedProcess."""
    return cli_runner.ok


@pytest.fixture(scope="session")
def cli_many(cli_runner) -> Callable[..., list[subprocess.CompletedProcess]]:
    """``cli_many([[...], [...]])``: independent commands that must all succeed, in parallel."""
    return cli_runner.many


@pytest.fixture(scope="session")
def cli_error(cli_runner) -> Callable[..., str]:
    """``cli_error([...], "command")``: run a command that must fail cleanly; its one line."""
    return cli_runner.error


# --------------------------------------------------------------------------- tiny HF models

def _train_bpe(specials: list[str]) -> "tokenizers.Tokenizer":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([corpus_text()], trainer)
    return tok


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from HF's std-0.02 init, so greedy picks are clear winners, not near-ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name or ".ln_" in name:
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                param.copy_(0.2 * noise)


@pytest.fixture(scope="session")
def gpt2_hf_dirs(e2e_root) -> dict[str, Path]:
    """One tiny GPT-2, saved twice: with vocab.json + merges.txt only, and with tokenizer.json."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = _train_bpe(["<|endoftext|>"])
    eot = bpe.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=CONTEXT, n_embd=WIDTH,
                        n_layer=LAYERS, n_head=2, bos_token_id=eot, eos_token_id=eot)
    model = GPT2LMHeadModel(config).eval()
    _randomize(model, seed=1)
    dirs = {"vocab-merges": e2e_root / "gpt2-vocab-merges", "tokenizer-json": e2e_root / "gpt2-tj"}
    for directory in dirs.values():
        model.save_pretrained(directory)
    bpe.model.save(str(dirs["vocab-merges"]))  # vocab.json + merges.txt, nothing else
    fast = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                             eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(dirs["tokenizer-json"])
    assert not (dirs["vocab-merges"] / "tokenizer.json").exists()
    assert (dirs["tokenizer-json"] / "tokenizer.json").is_file()
    return dirs


@pytest.fixture(scope="session")
def gpt2_hf_dir(gpt2_hf_dirs) -> Path:
    """The tokenizer.json GPT-2 (the one fine-tuning journeys start from)."""
    return gpt2_hf_dirs["tokenizer-json"]


@pytest.fixture(scope="session")
def llama_hf_dir(e2e_root) -> Path:
    """A Llama-3-style model: BOS-adding tokenizer.json, chat template, two EOS ids."""
    from tokenizers import processors
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    bpe = _train_bpe(LLAMA_SPECIALS)
    ids = {t: bpe.token_to_id(t) for t in LLAMA_SPECIALS}
    bos, eos, eot = ids["<|begin_of_text|>"], ids["<|end_of_text|>"], ids["<|eot_id|>"]
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=WIDTH, intermediate_size=64,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=CONTEXT, rope_theta=500_000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        bos_token_id=bos, eos_token_id=[eos, eot])
    model = LlamaForCausalLM(config).eval()
    _randomize(model, seed=2)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot])
    directory = e2e_root / "llama"
    model.save_pretrained(directory)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>")
    tok.chat_template = LLAMA_TEMPLATE
    tok.save_pretrained(directory)
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [eos, eot]
    return directory


@pytest.fixture(scope="session")
def qwen3_hf_dir(e2e_root, gpt2_hf_dir) -> Path:
    """A tiny Qwen3 (QK-norm, explicit head_dim); the GPT-2 BPE stands in for its tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab = json.loads((gpt2_hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=WIDTH, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
                         eos_token_id=vocab["<|endoftext|>"], bos_token_id=None)
    model = Qwen3ForCausalLM(config).eval()
    _randomize(model, seed=3)
    directory = e2e_root / "qwen3"
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gpt2_hf_dir / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def hub_snapshot(hf_cache, gpt2_hf_dir) -> Path:
    """``e2e-owner/tiny-gpt2`` in the cache layout huggingface_hub itself writes."""
    repo = hf_cache / ("models--" + HUB_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / HUB_COMMIT
    shutil.copytree(gpt2_hf_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


# --------------------------------------------------------------------------- reference & data

@pytest.fixture(scope="session")
def data_dir(e2e_root) -> Path:
    """The user's data files (written by the fixtures below)."""
    path = e2e_root / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def corpus_file(data_dir) -> Path:
    path = data_dir / "story.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def spam_file(data_dir) -> Path:
    """A labelled TSV (label<TAB>text): 20 ham, 20 spam, two obvious styles."""
    ham = ["see you at lunch", "call me when you get home", "the meeting moved to noon",
           "thanks for dinner", "running late, be there soon"]
    spam = ["WIN a FREE cruise now!!! call 0800", "you won a prize, claim your cash now",
            "URGENT: your account wins 1000 pounds", "free entry, text WIN to 80082",
            "claim your FREE ringtone now"]
    rows = [f"ham\t{ham[i % 5]} {i}" for i in range(20)] + \
        [f"spam\t{spam[i % 5]} {i}" for i in range(20)]
    path = data_dir / "spam.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def instruct_file(data_dir) -> Path:
    entries = [{"instruction": f"Add {i} and {i + 1}.", "input": "",
                "output": f"The sum is {2 * i + 1}."} for i in range(14)]
    entries += [{"instruction": "Rewrite the sentence in passive voice.",
                 "input": f"The cat chased mouse number {i}.",
                 "output": f"Mouse number {i} was chased by the cat."} for i in range(6)]
    path = data_dir / "instructions.json"
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def preference_file(data_dir) -> Path:
    entries = [{"instruction": f"Name a colour, politely ({i}).", "input": "",
                "output": "Blue.", "chosen": "Blue, if I may suggest it.",
                "rejected": "Blue. Obviously."} for i in range(20)]
    path = data_dir / "preferences.json"
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- a scratchllm run

@pytest.fixture(scope="session")
def pretrain_run(cli, corpus_file, e2e_root) -> Path:
    """``scratchllm pretrain --preset tiny --max-steps 3`` on a page of text."""
    run = e2e_root / "runs" / "tiny"
    cli(["pretrain", "--data", corpus_file, "--preset", "tiny", "--max-steps", 3,
         "--out", run, "--context-length", 32, "--batch-size", 4, "--eval-every", 3,
         "--save-every", 3, "--set", "eval_batches=1", "--set", "sample_tokens=4",
         "--device", "cpu", "--precision", "fp32"])
    return run




@pytest.fixture(scope="session")
def exported_run(cli, pretrain_run, e2e_root) -> Path:
    """``scratchllm export RUN --to hf OUT``: the run's latest model in Hugging Face format."""
    out = e2e_root / "exports" / "tiny-hf"
    proc = cli(["export", pretrain_run, "--to", "hf", out])
    assert str(out) in proc.stdout
    return out


@pytest.fixture(scope="session")
def chatty_model(e2e_root) -> Path:
    """A random model with GPT-2's 50,257 tokens: it all but never picks the end token, so
    an answer runs its full --max-new-tokens and is still streaming when the signal comes."""
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
    from scratchllm.weights.model_dir import save_model_dir

    with torch.random.fork_rng():  # the session's other tests keep their random stream
        torch.manual_seed(0)
        model = GPTModel(GPTConfig.preset("tiny", context_length=1024))
    out = e2e_root / "chatty"
    save_model_dir(out, model, GPT2Tokenizer())
    return out
