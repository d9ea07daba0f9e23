"""Tiny models for the chat tests, each built once per session in a few hundred milliseconds.

* ``llama_dir``: a Llama-3-style Hugging Face directory written by ``transformers`` itself:
  BOS-adding tokenizer.json, Llama 3's chat template, two end ids, a 256-token context.
  ``transformers`` (its tokenizer and greedy ``generate``) is the reference.
* ``endless_dir``: a scratchllm GPT whose answers never end (the end-of-text logit is held far
  below the rest), for stopping an answer with Ctrl-C; no chat template, so plain prompts.
* ``alpaca_dir``: the same weights saved as a model fine-tuned with Alpaca prompts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

BOS, END, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
LLAMA_SPECIALS = [BOS, END, "<|start_header_id|>", "<|end_header_id|>", EOT]
# Meta's Llama 3 Instruct template (trims each message, BOS before the first).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CORPUS = ("The quick brown fox jumps over the lazy dog. What is the capital of France? "
          "Paris is the capital. Tell me a story about a cat who likes fish and milk. "
          "Be brief and kind. Hello there, how are you today? I am fine, thank you. "
          "### Instruction:\n### Response:\n<|user|>\n<|assistant|>:\nUser: Assistant: "
          "Below is an instruction that describes a task. Write a response that "
          "appropriately completes the request. 0123456789 And... ABCDEFGHIJKLMNOPQRSTUVWXYZ "
          "abcdefghijklmnopqrstuvwxyz ?!.,:;'\"-()[]{}/_=+*&%$@~`^\t ") * 30
CONTEXT = 256


def train_bpe(specials: list[str], vocab_size: int = 320) -> "tokenizers.Tokenizer":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False)  # ASCII bytes only: readable answers
    tok.train_from_iterator([CORPUS], trainer)
    return tok


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from HF's std-0.02 init, so greedy picks are clear winners, not near-ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    from tokenizers import processors
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    bpe = train_bpe(LLAMA_SPECIALS)
    bos, end, eot = (bpe.token_to_id(t) for t in (BOS, END, EOT))
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=CONTEXT, rope_theta=500_000.0, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=[end, eot])
    model = LlamaForCausalLM(config).eval()
    _randomize(model, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[end, eot])
    directory = tmp_path_factory.mktemp("chat") / "llama"
    model.save_pretrained(directory)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOT)
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_tokenizer(llama_dir):
    return transformers.AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="session")
def hf_model(llama_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()


def hf_answer(hf_tokenizer, hf_model, messages: list[dict], max_new_tokens: int) -> str:
    """transformers' greedy answer to ``messages`` (its chat template, its generate), decoded
    without the end token that stopped it (scratchllm does not print it). Special token
    strings in messages (this random model writes some) are text, as in scratchllm chat."""
    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           tokenize=True, return_dict=False,
                                           sanitize_control_tokens=True)
    ids = torch.tensor([ids])
    eos = set(hf_model.generation_config.eos_token_id)
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=min(eos))
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] in eos:
        new = new[:-1]
    return hf_tokenizer.decode(new, skip_special_tokens=False)


@pytest.fixture(scope="session")
def plain_tokenizer(tmp_path_factory):
    """A byte-level BPE with only <|endoftext|> and no chat template (scratchllm's HFTokenizer)."""
    from scratchllm.tokenizers.hf import HFTokenizer

    directory = tmp_path_factory.mktemp("plain-tok")
    train_bpe(["<|endoftext|>"]).save(str(directory / "tokenizer.json"))
    return HFTokenizer.from_file(directory / "tokenizer.json", {"eos_token": "<|endoftext|>"})


@pytest.fixture(scope="session")
def endless_model(plain_tokenizer):
    """A tiny GPT that never picks <|endoftext|>: the final norm's shift makes one hidden unit
    at least 6, and the end token's output row reads only that unit, negated."""
    from scratchllm.model import GPTConfig, GPTModel

    torch.manual_seed(11)
    model = GPTModel(GPTConfig(vocab_size=plain_tokenizer.vocab_size, context_length=4096,
                               emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)).eval()
    eot = plain_tokenizer.eot_id
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
        model.final_norm.weight[0], model.final_norm.bias[0] = 1.0, 10.0  # |normed| <= 4
        model.out_head.weight[:, 0] = 0.0
        model.out_head.weight[eot] = 0.0
        model.out_head.weight[eot, 0] = -5.0
    return model


@pytest.fixture(scope="session")
def endless_dir(tmp_path_factory, endless_model, plain_tokenizer) -> Path:
    from scratchllm.weights.model_dir import save_model_dir

    return save_model_dir(tmp_path_factory.mktemp("endless") / "m", endless_model,
                          tokenizer=plain_tokenizer)


@pytest.fixture(scope="session")
def alpaca_dir(tmp_path_factory, endless_model, plain_tokenizer) -> Path:
    from scratchllm.weights.model_dir import save_model_dir

    return save_model_dir(tmp_path_factory.mktemp("alpaca") / "m", endless_model,
                          tokenizer=plain_tokenizer, metadata={"prompt_style": "alpaca"})


def chat_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SCRATCHLLM_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8",
               TOKENIZERS_PARALLELISM="false")
    return env


def run_chat(args: list, stdin: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m scratchllm chat ARGS`` with ``stdin`` piped in."""
    return subprocess.run([sys.executable, "-m", "scratchllm", "chat", *map(str, args)],
                          input=stdin, env=chat_env(), text=True, capture_output=True,
                          timeout=timeout)
