"""Tiny models for the chat tests, each built once per session in a few hundred milliseconds.

* ``llama_dir``: a Llama-3-style Hugging Face directory written by ``transformers`` itself:
  BOS-adding tokenizer.json, Llama 3's chat template, two end ids, a 256-token context.
  ``transformers`` (its tokenizer and greedy ``generate``) is the reference.
* ``endless_dir``: a scratchllm GPT whose answers never end (the end-of-text logit is held far
  below the rest), for stopping an answer with Ctrl-C; no chat template, so plain prompts.
* ``alpaca_dir``: the same weights saved as a model fine-tuned with Alpaca prompts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chat_support import BOS, CONTEXT, END, EOT, LLAMA3_TEMPLATE, LLAMA_SPECIALS, randomize, \
    train_bpe

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


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
    randomize(model, seed=5)
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
