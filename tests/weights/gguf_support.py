"""Tiny models and tokenizers for the GGUF / Ollama export tests, and a GGUF reading helper.

(A module of its own name: ``from conftest import`` would find whichever conftest.py was
imported first in a whole-suite run.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CORPUS = ("The quick brown fox jumps over the lazy dog. What is the capital of France? "
          "Paris is the capital. Name a colour. Blue. Another one? Be brief. "
          "Below is an instruction that describes a task. ### Instruction: ### Response: "
          "<|user|> <|assistant|>: User: Assistant: 0123456789 ") * 20
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]
# Meta's Llama 3 Instruct template (trims each message, BOS before the first).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def hf_tokenizer(specials: list[str] | None = None, *, bos: str | None = None,
                 eos: str = "<|endoftext|>", template: str | None = None,
                 vocab_size: int = 384) -> Any:
    """A byte-level BPE trained with ``tokenizers`` (all 256 bytes, GPT-2's regex) as
    scratchllm's HFTokenizer; ``bos`` adds a BOS post-processor like Llama 3's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from scratchllm.tokenizers.hf import HFTokenizer

    specials = specials or [eos]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    config: dict[str, Any] = {"eos_token": eos}
    if bos is not None:
        config["bos_token"] = bos
    if template is not None:
        config["chat_template"] = template
    return HFTokenizer(tok, config)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from their init (norms and biases too), so a swapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)
    return model.eval()


def tiny_gpt(vocab: int, *, tie: bool = False, qkv_bias: bool = False, seed: int = 1) -> Any:
    from scratchllm.model import GPTConfig, GPTModel

    return randomize(GPTModel(GPTConfig(vocab_size=vocab, context_length=64, emb_dim=64,
                                        n_heads=4, n_layers=2, drop_rate=0.0, tie_weights=tie,
                                        qkv_bias=qkv_bias)), seed)


def tiny_llama(vocab: int, *, qwen3: bool = False, scaling: bool = True, tie: bool = False,
               seed: int = 2) -> Any:
    from scratchllm.model.llama import LlamaConfig, LlamaModel

    extra: dict[str, Any] = dict(qk_norm=True, head_dim=32, rms_norm_eps=1e-6) if qwen3 else {}
    if scaling and not qwen3:
        extra["rope_scaling"] = dict(factor=8.0, original_context_length=32)
    config = LlamaConfig(vocab_size=vocab, context_length=128, emb_dim=64, n_heads=4,
                         n_kv_groups=2, n_layers=2, hidden_dim=96, rope_base=10_000.0,
                         tie_weights=tie, **extra)
    return randomize(LlamaModel(config), seed)


def loaded_model(model: Any, tokenizer: Any, metadata: dict | None = None,
                 source: str = "tiny") -> Any:
    """What ``open_model`` returns, for a model built in memory."""
    from scratchllm.weights.auto import LoadedModel, collect_eos_ids

    eos = collect_eos_ids(tokenizer, vocab_size=model.config.vocab_size)
    return LoadedModel(model, tokenizer, Path(source), "scratchllm", eos, dict(metadata or {}))


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata key -> value, tensor name -> ReaderTensor) of a GGUF file, via gguf's reader."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def tensor_array(tensor: Any) -> Any:
    """A ReaderTensor as float32 numpy in PyTorch's (out, in) order, dequantized if needed."""
    import gguf
    import numpy as np

    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
