"""Fine-tuning pretrained models: text classification (book ch. 6) with optional LoRA
(appendix E), instruction tuning (ch. 7), DPO (ch. 7 bonus) and the loop they share
(checkpoints, --resume, schedule, accumulation); the reward model and RL are in
``finetune.reward_model`` and ``finetune.rl``.

The names below are imported on first use (``utils.lazy``), so a light submodule (the CLI
reads ``finetune.classifier_model.TRAINABLE_CHOICES``) does not import torch through here.
"""

from typing import TYPE_CHECKING

from scratchllm.utils.lazy import lazy_exports

_EXPORTS = {
    **{name: "scratchllm.finetune.classifier_model" for name in (
        "attach_classifier_head", "classify_texts", "last_token_logits", "load_classifier",
        "save_classifier", "set_trainable")},
    "ClassifierResult": "scratchllm.finetune.classify",
    "finetune_classifier": "scratchllm.finetune.classify",
    "DPOResult": "scratchllm.finetune.dpo",
    "dpo_loss": "scratchllm.finetune.dpo",
    "finetune_dpo": "scratchllm.finetune.dpo",
    "InstructResult": "scratchllm.finetune.instruct",
    "finetune_instruct": "scratchllm.finetune.instruct",
    "generate_responses": "scratchllm.finetune.instruct",
    "FinetuneLoop": "scratchllm.finetune.loop",
    "LoopResult": "scratchllm.finetune.loop",
    "LoopSettings": "scratchllm.finetune.loop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from scratchllm.finetune.classifier_model import (
        attach_classifier_head, classify_texts, last_token_logits, load_classifier,
        save_classifier, set_trainable,
    )
    from scratchllm.finetune.classify import ClassifierResult, finetune_classifier
    from scratchllm.finetune.dpo import DPOResult, dpo_loss, finetune_dpo
    from scratchllm.finetune.instruct import InstructResult, finetune_instruct, generate_responses
    from scratchllm.finetune.loop import FinetuneLoop, LoopResult, LoopSettings
