"""Helpers for the chat tests (fixtures live in conftest.py; a module of its own name, since
``from conftest import`` would find whichever conftest.py was imported first)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

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


def train_bpe(specials: list[str], vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False)  # ASCII bytes only: readable answers
    tok.train_from_iterator([CORPUS], trainer)
    return tok


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from HF's std-0.02 init, so greedy picks are clear winners, not near-ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)


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
