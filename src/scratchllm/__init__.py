"""scratchllm: a GPT-style language model built from scratch, through its whole life.

Tokenize (``scratchllm.tokenizers``), build datasets (``scratchllm.data``), define the model
(``scratchllm.model``), generate text (``scratchllm.generate``) and pretrain
(``scratchllm.train``). ``docs/book-map.md`` maps each section of the book
*Build a Large Language Model (From Scratch)* to the code that implements it.
"""

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"

__all__ = ["ScratchLLMError", "__version__"]
