"""ChatSession and Reply: answers are the greedy continuation of the rendered prompt, stopping
an answer keeps it (marked cut) without touching the model's mode, and ``scratchllm chat``
in-process on a model fine-tuned with Alpaca prompts."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import torch

import pytest

from scratchllm.chat import ChatSession, InstructionFormat, PlainFormat, Sampling, choose_format
from scratchllm.cli import main as cli_main
from scratchllm.generate import generate
from scratchllm.weights.auto import open_model

from chat_support import hf_answer


@pytest.fixture(autouse=True)
def _only_chat(monkeypatch):
    """Build the parser from this command only, so others' half-done modules can't break it."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.chat"])


def test_session_answers_equal_transformers_greedy(llama_dir, hf_tokenizer, hf_model):
    loaded = open_model(llama_dir, require_tokenizer=True)
    session = ChatSession(loaded.model, loaded.tokenizer, choose_format(loaded.tokenizer),
                          eos_ids=loaded.eos_ids, sampling=Sampling(max_new_tokens=12),
                          system="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}]
    answers = []
    for user in ["Hello there", "What is the capital of France?"]:
        reply = session.ask(user)
        text = "".join(reply)
        messages.append({"role": "user", "content": user})
        assert text == hf_answer(hf_tokenizer, hf_model, messages, 12)
        assert reply.done and not reply.cut and reply.dropped == 0
        messages.append({"role": "assistant", "content": text})
        answers.append(text)
    assert answers[0] and answers[0] != answers[1]
    assert [t.assistant for t in session.conversation.turns] == answers


def test_stop_keeps_the_partial_answer_marked_cut(endless_model, plain_tokenizer):
    endless_model.train()  # the reply restores the mode it found
    session = ChatSession(endless_model, plain_tokenizer, PlainFormat(plain_tokenizer),
                          eos_ids=[plain_tokenizer.eot_id],
                          sampling=Sampling(max_new_tokens=200))
    reply = session.ask("Hello there")
    first = reply.prompt_ids
    parts = [next(reply) for _ in range(5)]
    assert not endless_model.training  # generating in eval mode
    reply.stop()
    assert endless_model.training
    assert reply.cut and reply.text == "".join(parts) and list(reply) == []
    turn = session.conversation.turns[-1]
    assert (turn.user, turn.assistant, turn.cut) == ("Hello there", "".join(parts), True)
    # The next prompt holds the cut answer as it was shown.
    expected = PlainFormat(plain_tokenizer).encode(None, [turn], "More")
    assert session.prompt_for("More").ids == expected
    # The uncut answer would have gone on: 200 tokens, greedy, equal to generate().
    full = generate(endless_model.eval(), first, 200)[len(first):]
    assert len(full) == 200 and plain_tokenizer.eot_id not in full
    assert plain_tokenizer.decode(full).startswith(reply.text)
    endless_model.eval()


def test_stop_from_another_thread_ends_after_the_current_piece(endless_model, plain_tokenizer):
    session = ChatSession(endless_model, plain_tokenizer, PlainFormat(plain_tokenizer),
                          sampling=Sampling(max_new_tokens=3000))
    reply = session.ask("Hello")
    seen = []
    for piece in reply:
        seen.append(piece)
        if len(seen) == 3:
            threading.Thread(target=reply.stop).start()
            threading.Event().wait(0.2)
    assert 3 <= len(seen) <= 4 and reply.cut and reply.text == "".join(seen)
    assert session.conversation.turns[-1].cut


def test_cli_chat_on_an_alpaca_model(alpaca_dir, plain_tokenizer, endless_model, monkeypatch,
                                     capsys):
    """The model's metadata picks Alpaca prompts; each answer is generate()'s greedy text."""
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/system Be brief.\nHello there\n"))
    code = cli_main.main(["chat", "--model", str(alpaca_dir), "--max-new-tokens", "9"])
    out, err = capsys.readouterr()
    assert code == 0 and "Alpaca instruction prompts" in err
    fmt = InstructionFormat(plain_tokenizer, "alpaca")
    expected = ""
    for system in (None, "Be brief."):
        ids = fmt.encode(system, [], "Hello there")
        new = generate(endless_model, ids, 9)[len(ids):]
        expected += plain_tokenizer.decode(new) + "\n"
    assert out == expected
    assert "history cleared" in err


def test_cli_bad_values_are_one_line(alpaca_dir, endless_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    for argv, needle in [
        (["--model", str(tmp_path / "missing")], "does not exist"),
        (["--model", str(alpaca_dir), "--max-new-tokens", "4096"], "4096-token context"),
        (["--model", str(alpaca_dir), "--top-p", "3"], "top_p"),
        (["--model", str(endless_dir), "--prompt-style", "template"], "no chat template"),
    ]:
        code = cli_main.main(["chat", *argv])
        _, err = capsys.readouterr()
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("scratchllm chat: error: ") and needle in err, err


def test_cli_chat_with_a_lora_adapter(alpaca_dir, plain_tokenizer, endless_model, tmp_path,
                                      monkeypatch, capsys):
    """--adapter merges a PEFT-layout adapter into the model: the answer is the merged
    model's greedy text, not the base model's."""
    import copy

    from scratchllm.model.lora import apply_lora, lora_layers, merge_lora
    from scratchllm.weights.lora_adapter import save_lora_adapter

    tuned = apply_lora(copy.deepcopy(endless_model), rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(tuned).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    adapter = save_lora_adapter(tuned, tmp_path / "adapter", base_source=alpaca_dir)
    merged = merge_lora(tuned).eval()
    ids = InstructionFormat(plain_tokenizer, "alpaca").encode(None, [], "Hello there")
    expected = plain_tokenizer.decode(generate(merged, ids, 9)[len(ids):])
    assert expected != plain_tokenizer.decode(generate(endless_model, ids, 9)[len(ids):])
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n"))
    code = cli_main.main(["chat", "--model", str(alpaca_dir), "--adapter", str(adapter),
                          "--max-new-tokens", "9"])
    out, err = capsys.readouterr()
    assert code == 0 and out == expected + "\n", err


def test_cli_seed_makes_sampled_chats_repeatable(alpaca_dir, monkeypatch, capsys):
    def chat(seed: str) -> str:
        monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\nHello there\n"))
        code = cli_main.main(["chat", "--model", str(alpaca_dir), "--max-new-tokens", "12",
                              "--temperature", "1.5", "--seed", seed])
        out, _ = capsys.readouterr()
        assert code == 0
        return out

    first = chat("1")
    assert first == chat("1") and first != chat("2")


def test_a_message_the_template_refuses_is_not_sent_and_the_chat_goes_on(
        llama_dir, tmp_path, monkeypatch, capsys):
    """Gemma-style templates refuse a system role: that message is refused in one line,
    and without the system message the chat works."""
    import json
    import shutil

    directory = Path(shutil.copytree(llama_dir, tmp_path / "gemma-like"))
    template = directory / "chat_template.jinja"  # where transformers saves it
    assert "chat_template" not in json.loads((directory / "tokenizer_config.json").read_text())
    template.write_text("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System "
                        "role not supported') }}{% endif %}" + template.read_text())
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/system\nHello\n"))
    code = cli_main.main(["chat", "--model", str(directory), "--system", "Be brief.",
                          "--max-new-tokens", "5"])
    out, err = capsys.readouterr()
    assert code == 0
    refused = [line for line in err.splitlines() if line.startswith("not sent:")]
    assert len(refused) == 1 and "System role not supported" in refused[0]
    loaded = open_model(directory)
    ids = choose_format(loaded.tokenizer).encode(None, [], "Hello")
    new = generate(loaded.model, ids, 5, eos_id=loaded.eos_ids)[len(ids):]
    assert out == loaded.tokenizer.decode(new) + "\n"


def test_cli_chat_default_answer_length_fits_a_small_context(endless_model, plain_tokenizer,
                                                               tmp_path, monkeypatch, capsys):
    """Without --max-new-tokens a 128-position model (what `scratchllm pretrain` makes by
    default) chats with answers of half its context; the fixed default of 256 was refused
    ("below the model's 128-token context") before the first message."""
    from scratchllm.model import GPTModel
    from scratchllm.weights.model_dir import save_model_dir

    config = endless_model.config.__class__(**{**endless_model.config.to_dict(),
                                               "context_length": 128})
    small = GPTModel(config).eval()
    state = endless_model.state_dict()
    state["pos_emb.weight"] = state["pos_emb.weight"][:128]
    small.load_state_dict(state)
    directory = save_model_dir(tmp_path / "small", small, tokenizer=plain_tokenizer,
                               metadata={"prompt_style": "alpaca"})
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n"))
    assert cli_main.main(["chat", "--model", str(directory)]) == 0
    out, _ = capsys.readouterr()
    ids = InstructionFormat(plain_tokenizer, "alpaca").encode(None, [], "Hello there")
    new = generate(small, ids, 64)[len(ids):]  # the model never ends: exactly 128 // 2 tokens
    assert len(new) == 64 and out == plain_tokenizer.decode(new) + "\n"
