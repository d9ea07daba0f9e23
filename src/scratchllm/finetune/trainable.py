"""Which weights a classifier fine-tune trains (book 6.5), as names only.

Kept apart from ``classifier_model`` (which imports torch) so ``scratchllm finetune classify
--help`` can offer them as choices without loading the model code.
"""

TRAINABLE_CHOICES = ("head", "last-block", "all", "lora")
