"""Exports for other runtimes: llama.cpp's GGUF and an Ollama model folder.

They stand above ``weights`` (the tensors and the GGUF file format) and ``data`` (the prompt
formats a fine-tune was trained on, which the exported chat template must reproduce), so
neither lower layer has to import the other.
"""
