"""Fine-tuning pretrained models: text classification (book ch. 6) with optional LoRA (appendix E)."""

from scratchllm.finetune.classifier_model import (
    attach_classifier_head, classify_texts, last_token_logits, load_classifier, save_classifier,
    set_trainable,
)
from scratchllm.finetune.classify import ClassifierResult, finetune_classifier

__all__ = [
    "ClassifierResult", "attach_classifier_head", "classify_texts", "finetune_classifier",
    "last_token_logits", "load_classifier", "save_classifier", "set_trainable",
]

# Instruction tuning (book ch. 7) and DPO (ch. 7 bonus).
from scratchllm.finetune.dpo import DPOResult, dpo_loss, finetune_dpo  # noqa: E402
from scratchllm.finetune.instruct import (  # noqa: E402
    InstructResult, finetune_instruct, generate_responses,
)

__all__ += ["DPOResult", "InstructResult", "dpo_loss", "finetune_dpo", "finetune_instruct",
            "generate_responses"]

# The loop all three methods share (checkpoints, --resume, schedule, accumulation).
from scratchllm.finetune.loop import FinetuneLoop, LoopResult, LoopSettings  # noqa: E402

__all__ += ["FinetuneLoop", "LoopResult", "LoopSettings"]
