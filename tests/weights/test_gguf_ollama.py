"""``export --to ollama``: the Modelfile parses as Ollama documents it, and its Go template renders
the very prompt ``scratchllm chat`` builds for the same conversation, in every prompt format."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")

from gguf_support import (LLAMA3_TEMPLATE, LLAMA_SPECIALS, hf_tokenizer,  # noqa: E402
                          loaded_model, read_gguf, tiny_gpt, tiny_llama)
from ollama_support import parse_modelfile, render  # noqa: E402

from scratchllm.chat.conversation import Turn, as_messages  # noqa: E402
from scratchllm.chat.formats import choose_format  # noqa: E402
from scratchllm.errors import ConfigError  # noqa: E402
from scratchllm.export.ollama import export_ollama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                   "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM, TURNS, USER = "Be brief.", [Turn("Name a colour.", "Blue.")], "What is the capital?"


def test_go_template_renderer_follows_go_semantics():
    """The test's renderer against outputs worked out by hand from Go's text/template rules."""
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    last = ('{{ range $i, $m := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}'
            'last:{{ $m.Content }}{{ else if eq .Role "assistant" }}A{{ $i }},'
            '{{ else }}{{ $i }}:{{ .Content }},{{ end }}{{ end }}')
    assert render(last, messages) == "0:a,A1,last:c"
    assert render("x  {{- if and .System (not .Prompt) }} yes {{ end -}}  y", messages) == "xy"
    assert render("{{ if .System }}S{{ else }}none{{ end }}", messages) == "none"


def _models() -> dict:
    plain = hf_tokenizer()
    llama = hf_tokenizer(LLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>",
                         template=LLAMA3_TEMPLATE)
    chatml = hf_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                          template=CHATML_TEMPLATE)
    gpt = tiny_gpt(plain.vocab_size)
    return {
        "alpaca": loaded_model(gpt, plain, {"prompt_style": "alpaca"}),
        "phi3": loaded_model(gpt, plain, {"prompt_style": "phi3"}),
        "plain": loaded_model(gpt, plain),
        "llama3": loaded_model(tiny_llama(llama.vocab_size), llama),
        "chatml": loaded_model(tiny_llama(chatml.vocab_size, qwen3=True), chatml),
    }


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
def test_modelfile_renders_scratchllms_prompt(tmp_path, name):
    loaded = MODELS[name]
    out = export_ollama(loaded, tmp_path / "ollama", type_name="q8_0")
    entries = parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    kinds = [kind for kind, _ in entries]
    assert kinds.count("FROM") == 1 and kinds.count("TEMPLATE") == 1
    values = dict(entries)
    assert (out / values["FROM"]).resolve() == (out / "model.gguf").resolve()
    params = [v.split(" ", 1) for k, v in entries if k == "PARAMETER"]
    stops = [v for p, v in params if p == "stop"]
    tok = loaded.tokenizer
    assert {tok.decode([i]) for i in loaded.eos_ids} <= set(stops)
    assert ("num_ctx", str(loaded.model.config.context_length)) in map(tuple, params)
    assert ("temperature", "0") in map(tuple, params)

    fmt = choose_format(tok, loaded.metadata)
    assert fmt.name == {"llama3": "template", "chatml": "template"}.get(name, name)
    ids = fmt.encode(SYSTEM, TURNS, USER)
    prefix = list(tok.prompt_prefix)
    assert ids[:len(prefix)] == prefix  # llama.cpp adds BOS itself (add_bos_token)
    expected = tok.decode(ids[len(prefix):])
    assert render(values["TEMPLATE"], as_messages(SYSTEM, TURNS, USER)) == expected
    fields, _ = read_gguf(out / "model.gguf")
    assert fields["tokenizer.ggml.add_bos_token"] is bool(prefix)
    if name != "plain":  # the GGUF carries the Jinja template llama-server uses
        assert fields["tokenizer.chat_template"]
    assert sorted(p.name for p in out.iterdir()) == [".scratchllm", "Modelfile", "model.gguf"]


def test_unknown_chat_template_is_refused_before_writing(tmp_path):
    odd = hf_tokenizer(template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    loaded = loaded_model(tiny_gpt(odd.vocab_size), odd)
    with pytest.raises(ConfigError, match="Llama 3 and ChatML"):
        export_ollama(loaded, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_with_users_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "Modelfile").write_text("FROM llama3\n")
    with pytest.raises(ConfigError, match="not written by scratchllm"):
        export_ollama(MODELS["plain"], out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["Modelfile"]
    assert (out / "Modelfile").read_text() == "FROM llama3\n"
