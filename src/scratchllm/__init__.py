"""scratchllm: a GPT-style language model built from scratch, through its whole life.

Tokenize (``scratchllm.tokenizers``), build datasets (``scratchllm.data``), define the model
(``scratchllm.model``), generate text (``scratchllm.generate``) and pretrain
(``scratchllm.train``). ``scratchllm.load(path_or_name)`` returns ``(model, tokenizer)`` from a
model directory, a training run, a Hugging Face directory or a Hub name (``"gpt2"``). ``docs/book-map.md`` maps each section of the book
*Build a Large Language Model (From Scratch)* to the code that implements it.
"""

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"


def load(path_or_name, *, device=None, dtype=None):
    """``(model, tokenizer)`` from a model/run/Hugging Face directory or a Hub name.

    See ``scratchllm.weights.auto.load``; imported on call so ``import scratchllm`` stays fast.
    """
    from scratchllm.weights.auto import load as _load
    return _load(path_or_name, device=device, dtype=dtype)


__all__ = ["ScratchLLMError", "__version__", "load"]
