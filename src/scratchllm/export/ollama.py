"""Export a model for Ollama: the GGUF file plus a ``Modelfile`` that ``ollama create`` reads.

Ollama builds prompts with its own Go template (``TEMPLATE``), not the GGUF's Jinja chat
template, so the Modelfile carries a Go template that writes exactly the prompt
``scratchllm chat`` builds for the same conversation:

* Alpaca / Phi-3 (a model fine-tuned with ``scratchllm finetune instruct``): earlier
  exchanges as complete training examples, each closed by the end-of-text token, the system
  message before the newest instruction;
* Llama 3 and ChatML (Qwen) chat templates, recognised by rendering the model's Jinja template
  for a probe conversation and comparing it with the Go template's Python twin below;
* plain ``User:`` / ``Assistant:`` lines for a base model.

``PARAMETER stop`` lists every end-of-sequence token (and the plain format's stop string),
``num_ctx`` the context window, ``temperature`` scratchllm chat's default (greedy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scratchllm.errors import ConfigError
from scratchllm.utils.atomic import atomic_directory
from scratchllm.utils.outputs import OutputKind, check_output_dir, write_marker

OLLAMA_EXPORT = OutputKind("export-ollama", ("model.gguf", "Modelfile"))
GGUF_NAME = "model.gguf"
CHAT_TEMPERATURE = 0.0  # `scratchllm chat --temperature` default: greedy answers
FORMATS = ("alpaca", "phi3", "llama3", "chatml", "plain")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class OllamaFormat:
    """A Go template for Ollama and ``render``, the same prompt built in Python (tests and
    the chat-template probe compare the two)."""

    name: str
    template: str
    render: Callable[[Messages], str]
    stops: tuple[str, ...] = ()


def _system(messages: Messages) -> str:
    """Ollama's ``.System``: every system message, joined by a blank line."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "system")


def _instruction_format(style: str, end_text: str) -> OllamaFormat:
    from scratchllm.data.chat_templates import instruction_chat_text
    from scratchllm.data.instruction import format_input, response_prefix

    marker = "\x00"
    before, _ = format_input({"instruction": marker, "input": ""}, style).split(marker)
    header = response_prefix(style)
    last = "(eq (len (slice $.Messages $i)) 1)"
    template = (
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}' + before
        + "{{ if and $.System " + last + " }}{{ $.System }}\n\n{{ end }}{{ $m.Content }}"
        + header + '{{ else if eq $m.Role "assistant" }}{{ $m.Content }}' + end_text
        + "{{ end }}{{ end }}")

    def render(messages: Messages) -> str:
        return instruction_chat_text(style, messages, end_token=end_text)

    return OllamaFormat(style, template, render)


def _plain_format() -> OllamaFormat:
    template = ('{{ if .System }}{{ .System }}\n\n{{ end }}{{ range .Messages }}'
                '{{ if eq .Role "user" }}User: {{ .Content }}\nAssistant:'
                '{{ else if eq .Role "assistant" }}{{ .Content }}\n{{ end }}{{ end }}')

    def render(messages: Messages) -> str:
        system = _system(messages)
        out = f"{system}\n\n" if system else ""
        for m in messages:
            if m["role"] == "user":
                out += f"User: {m['content']}\nAssistant:"
            elif m["role"] == "assistant":
                out += f"{m['content']}\n"
        return out

    # scratchllm stops at "\nUser:"; a Modelfile stop is one quoted line, so "User:" it is.
    return OllamaFormat("plain", template, render, stops=("User:",))


def _role_format(name: str, start: str, middle: str, end: str) -> OllamaFormat:
    """Templates that wrap every message as start + role + middle + content + end."""
    template = ("{{ range .Messages }}" + start + "{{ .Role }}" + middle + "{{ .Content }}"
                + end + "{{ end }}" + start + "assistant" + middle)

    def render(messages: Messages) -> str:
        body = "".join(start + m["role"] + middle + m["content"] + end for m in messages)
        return body + start + "assistant" + middle

    return OllamaFormat(name, template, render)


def _template_formats() -> list[OllamaFormat]:
    return [_role_format("llama3", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>"),
            _role_format("chatml", "<|im_start|>", "\n", "<|im_end|>\n")]


_PROBE = [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "Name a colour."},
          {"role": "assistant", "content": "Blue."},
          {"role": "user", "content": "Another one?"}]


def _matching_template_format(tokenizer: Any) -> OllamaFormat:
    """The Go template whose output equals the model's Jinja chat template on a probe chat."""
    rendered = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True)
    prefix = tokenizer.decode(tokenizer.prompt_prefix) if tokenizer.prompt_prefix else ""
    if prefix and rendered.startswith(prefix):
        rendered = rendered[len(prefix):]  # llama.cpp adds BOS itself (add_bos_token)
    for candidate in _template_formats():
        if candidate.render(_PROBE) == rendered:
            return candidate
    raise ConfigError("this model's chat template has no Ollama equivalent here (supported: "
                      "Llama 3 and ChatML templates, Alpaca and Phi-3 fine-tunes, plain base "
                      "models); export --to gguf and write the Modelfile's TEMPLATE yourself")


def ollama_format(loaded: Any) -> OllamaFormat:
    """The prompt format ``scratchllm chat`` uses for ``loaded``, as an Ollama template:
    the stored prompt style of a fine-tune, else the chat template, else plain text."""
    from scratchllm.data.chat_templates import end_token_text, prompt_style_of

    tokenizer = loaded.tokenizer
    style = prompt_style_of(loaded.metadata)
    if style is not None:
        return _instruction_format(style, end_token_text(tokenizer))
    if getattr(tokenizer, "chat_template", None):
        return _matching_template_format(tokenizer)
    return _plain_format()


def _quoted(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ConfigError(f"stop string {value!r} cannot be written as a Modelfile parameter")
    return f'"{value}"'


def modelfile_text(loaded: Any, gguf_name: str = GGUF_NAME) -> str:
    """The Modelfile: FROM the GGUF beside it, TEMPLATE, stops, context and temperature."""
    from scratchllm import __version__

    fmt = ollama_format(loaded)
    if '"""' in fmt.template:
        raise ConfigError('the prompt template contains """, which a Modelfile cannot quote')
    tokenizer = loaded.tokenizer
    stops = [tokenizer.decode([i]) for i in loaded.eos_ids] + list(fmt.stops)
    lines = [f"# {fmt.name} prompts; written by scratchllm {__version__}. Create the model "
             "with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}",
             f'TEMPLATE """{fmt.template}"""']
    lines += [f"PARAMETER stop {_quoted(s)}" for s in dict.fromkeys(stops) if s]
    lines += [f"PARAMETER num_ctx {loaded.model.config.context_length}",
              f"PARAMETER temperature {CHAT_TEMPERATURE:g}"]
    return "\n".join(lines) + "\n"


def export_ollama(loaded: Any, out_dir: str | os.PathLike, *, type_name: str | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``out_dir``/model.gguf and ``out_dir``/Modelfile (replacing the folder whole)."""
    from scratchllm.utils.atomic import atomic_write_text
    from scratchllm.export.gguf import export_gguf

    out_dir = Path(out_dir).expanduser()
    check_output_dir(out_dir, OLLAMA_EXPORT, overwrite=overwrite)
    text = modelfile_text(loaded)  # refuses unsupported formats before the weights are written
    with atomic_directory(out_dir) as tmp:
        write_marker(tmp, OLLAMA_EXPORT)
        export_gguf(loaded, tmp / GGUF_NAME, type_name=type_name)
        atomic_write_text(tmp / "Modelfile", text)
    return out_dir
