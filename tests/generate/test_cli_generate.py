"""`scratchllm generate` on a tiny Llama 3-style model directory: BOS, every EOS, --stop, --dtype."""

from __future__ import annotations

import pytest
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from scratchllm.cli import main as cli_main
from scratchllm.generate import generate
from scratchllm.model import LlamaConfig, LlamaModel
from scratchllm.tokenizers.hf import HFTokenizer
from scratchllm.weights.model_dir import load_model_dir, save_model_dir

BOS, EOT, END = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"
PROMPT = "Hello world"
NEW = 24


@pytest.fixture(autouse=True)
def _only_generate(monkeypatch, one_thread):
    """Build the parser from this command only, so others' half-done modules can't break it."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.generate"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> HFTokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Only the corpus's ASCII bytes: whatever a random model generates is readable text.
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[BOS, END, EOT],
                                  show_progress=False)
    backend.train_from_iterator(["Hello world, the quick brown fox jumps."] * 20, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, backend.token_to_id(BOS))])
    directory = tmp_path_factory.mktemp("tok")
    backend.save(str(directory / "tokenizer.json"))
    return HFTokenizer.from_file(directory / "tokenizer.json",
                                 {"bos_token": BOS, "eos_token": END})


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaModel:
    """The first seed whose greedy continuation is varied and holds no special token."""
    specials = set(tokenizer.special_tokens.values())
    for seed in range(50):
        torch.manual_seed(seed)
        model = LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=tokenizer.vocab_size,
                                              n_layers=1, dtype="float32")).eval()
        with torch.no_grad():  # larger weights: decisive, varied greedy continuations
            for p in model.parameters():
                p.mul_(3.0)
        new = generate(model, _reference_ids(tokenizer), NEW)[-NEW:]
        if len(set(new)) > 8 and not specials & set(new):
            return model
    raise AssertionError("no seed gave a varied continuation")


def _reference_ids(tokenizer: HFTokenizer) -> list[int]:
    """What transformers feeds a Llama 3 model for PROMPT: <|begin_of_text|> first."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer.source))
    ids = reference(PROMPT)["input_ids"]
    assert ids[0] == tokenizer.special_tokens[BOS]
    return ids


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main.main(["generate", PROMPT, "--max-new-tokens", str(NEW), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _free_run(model, tokenizer) -> list[int]:
    new = generate(model, _reference_ids(tokenizer), NEW)[-NEW:]
    assert len(set(new)) > 8
    return new


def test_prompt_gets_bos_and_every_eos_id_stops(model, tokenizer, tmp_path, capsys):
    free = _free_run(model, tokenizer)
    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    code, out, _ = _run(capsys, "--model", str(directory), "--no-eos-stop")
    assert code == 0 and out == PROMPT + tokenizer.decode(free) + "\n"
    # Two configured end ids (as a generation_config.json's list would give): the first of
    # them to come out ends the text.
    late, early = free[15], free[6]
    stop_at = min(free.index(late), free.index(early))
    directory = save_model_dir(tmp_path / "eos", model, tokenizer=tokenizer,
                               generation={"eos_ids": [late, early]})
    code, out, _ = _run(capsys, "--model", str(directory))
    assert code == 0 and out == PROMPT + tokenizer.decode(free[:stop_at]) + "\n"


def test_stop_strings_are_cut_from_the_output(model, tokenizer, tmp_path, capsys):
    free = _free_run(model, tokenizer)
    text = tokenizer.decode(free)
    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    # A stop string from the last character of one token to the end of the second token
    # after it: it is only ever seen across token boundaries.
    ends = [len(tokenizer.decode(free[:i])) for i in range(len(free) + 1)]
    j = next(j for j in range(3, len(free) - 2)
             if ends[j - 1] < ends[j] < ends[j + 2] and "\ufffd" not in text[:ends[j + 2]])
    stop = text[ends[j] - 1: ends[j + 2]]
    code, out, _ = _run(capsys, "--model", str(directory), "--stop", stop, "--stop", "zzzz")
    assert code == 0 and out == PROMPT + text[:text.index(stop)] + "\n"
    code, _, err = _run(capsys, "--model", str(directory), "--stop", "")
    assert code == 2 and "--stop" in err and len(err.strip().splitlines()) == 1


def test_dtype_loads_the_weights_in_that_dtype(model, tokenizer, tmp_path, capsys):
    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    for flag, dtype in [("bf16", torch.bfloat16), ("float16", torch.float16),
                        ("fp32", torch.float32)]:
        loaded, _ = load_model_dir(directory, dtype=dtype)
        assert loaded.tok_emb.weight.dtype == dtype
        new = generate(loaded, _reference_ids(tokenizer), NEW)[-NEW:]
        code, out, _ = _run(capsys, "--model", str(directory), "--dtype", flag, "--no-eos-stop")
        assert code == 0 and out == PROMPT + tokenizer.decode(new) + "\n", flag
    with pytest.raises(SystemExit):
        _run(capsys, "--model", str(directory), "--dtype", "int8")


def test_quantize_int8_is_the_library_s_int8_model(model, tokenizer, tmp_path, capsys):
    """--quantize int8 prints what open_model(quantize="int8") + generate gives, and that
    model's linear layers (the untied head too) really are int8."""
    from scratchllm.weights.auto import open_model

    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    int8 = open_model(directory, quantize="int8").model
    from scratchllm.model.int8_linear import Int8Linear

    assert isinstance(int8.out_head, Int8Linear) and not any(
        type(m) is torch.nn.Linear for m in int8.modules())
    new = generate(int8, _reference_ids(tokenizer), NEW)[-NEW:]
    code, out, err = _run(capsys, "--model", str(directory), "--quantize", "int8", "--no-eos-stop")
    assert code == 0 and out == PROMPT + tokenizer.decode(new) + "\n" and err == ""
    code, _, err = _run(capsys, "--model", str(directory), "--quantize", "int8", "--dtype", "bf16")
    assert code == 2 and "--dtype" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        _run(capsys, "--model", str(directory), "--quantize", "int4")


def test_stats_go_to_stderr_and_leave_stdout_alone(model, tokenizer, tmp_path, capsys):
    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    code, plain, _ = _run(capsys, "--model", str(directory), "--no-eos-stop")
    code, out, err = _run(capsys, "--model", str(directory), "--no-eos-stop", "--stats")
    assert code == 0 and out == plain
    fields = dict(line.split(":", 1) for line in err.strip().splitlines())
    fields = {k: v.split()[0] for k, v in fields.items()}
    assert int(fields["prompt tokens"]) == len(_reference_ids(tokenizer))
    assert int(fields["generated tokens"]) == NEW
    assert float(fields["time to first token"]) > 0 and float(fields["decode rate"]) > 0
    assert {"load time", "prompt rate", "decode time"} <= set(fields)


def test_bf16_on_a_cpu_without_bf16_instructions_says_so(model, tokenizer, tmp_path, capsys,
                                                         monkeypatch):
    from scratchllm.model import quantize

    directory = save_model_dir(tmp_path / "m", model, tokenizer=tokenizer)
    monkeypatch.setattr(quantize, "cpu_flags", lambda: {"avx2": True, "avx512_vnni": False,
                                                        "avx512_bf16": False, "amx": False})
    code, out, err = _run(capsys, "--model", str(directory), "--dtype", "bf16", "--device", "cpu")
    assert code == 0 and out.startswith(PROMPT)
    assert err.startswith("note: this CPU has no bf16 instructions") and err.count("\n") == 1
    monkeypatch.setattr(quantize, "cpu_flags", lambda: {"avx2": True, "avx512_vnni": True,
                                                        "avx512_bf16": True, "amx": True})
    code, _, err = _run(capsys, "--model", str(directory), "--dtype", "bf16", "--device", "cpu")
    assert code == 0 and err == ""
