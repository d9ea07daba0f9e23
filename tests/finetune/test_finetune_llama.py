"""Fine-tuning works for the Llama family too (issue: every architecture scratchllm loads)."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.finetune import finetune_classifier, load_classifier
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.model.llama import LlamaModel
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import load_model_dir, save_model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, shared_data):
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=50257, context_length=128))
    return save_model_dir(tmp_path_factory.mktemp("llama") / "base", model,
                          GPT2Tokenizer(shared_data / "gpt2"))


def test_instruction_finetuning_with_lora_on_llama(llama_dir, shared_data, tmp_path):
    entries = json.loads((shared_data / "instruction" / "instruction-data.json").read_text())[:20]
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(entries))
    result = finetune_instruct(llama_dir, data, tmp_path / "sft", epochs=1, batch_size=4,
                               max_length=96, max_new_tokens=3, progress=False,
                               lora={"rank": 4, "alpha": 8})
    tuned, _ = load_model_dir(result.model_dir)
    assert isinstance(tuned, LlamaModel)  # LoRA merged back into a plain Llama
    base, _ = load_model_dir(llama_dir)
    changed = [n for n, p in tuned.state_dict().items()
               if not torch.equal(p, base.state_dict()[n])]
    assert any("W_query" in n for n in changed) and any("fc3" in n for n in changed)
    answers = json.loads(result.responses_file.read_text())
    assert len(answers) == result.n_test and all("model_response" in a for a in answers)


def test_spam_classifier_on_llama(llama_dir, shared_data, tmp_path):
    lines = (shared_data / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()
    subset = [l for l in lines if l.startswith("ham")][:40] + \
        [l for l in lines if l.startswith("spam")][:40]
    data = tmp_path / "spam.tsv"
    data.write_text("\n".join(subset) + "\n", encoding="utf-8")
    result = finetune_classifier(llama_dir, data, tmp_path / "clf", epochs=1, batch_size=8,
                                 trainable="last-block", max_length=64, truncate=True,
                                 progress=False)
    assert set(result.metrics) >= {"train", "val", "test"}
    model, _, info = load_classifier(result.out_dir)
    assert isinstance(model, LlamaModel) and info["labels"] == ["ham", "spam"]
    assert model.out_head.out_features == 2


def test_bf16_models_are_fine_tuned_with_fp32_master_weights(shared_data, tmp_path):
    """A bf16 config (as Llama 3 / Qwen3 publish) trains fp32 weights: a 1e-6 AdamW update is
    far below bf16's spacing near the weights (about 1e-4) and would vanish in bf16."""
    torch.manual_seed(1)
    config = LlamaConfig.preset("tiny-llama", vocab_size=50257, context_length=96, n_layers=1,
                                dtype="bfloat16")
    base_dir = save_model_dir(tmp_path / "bf16", LlamaModel(config),
                              GPT2Tokenizer(shared_data / "gpt2"))
    entries = json.loads((shared_data / "instruction" / "instruction-data.json").read_text())[:10]
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(entries))
    result = finetune_instruct(base_dir, data, tmp_path / "sft", epochs=1, batch_size=8, lr=1e-6,
                               eval_every=10, eval_batches=1, generate_test=False,
                               device="cpu", progress=False)
    tuned, _ = load_model_dir(result.model_dir)
    base, _ = load_model_dir(base_dir)
    assert tuned.config.dtype == "float32" and tuned.tok_emb.weight.dtype == torch.float32
    moved = tuned.trf_blocks[0].ff.fc1.weight != base.trf_blocks[0].ff.fc1.weight.float()
    assert moved.float().mean() > 0.9  # nearly every weight took its tiny step
