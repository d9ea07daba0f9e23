"""An HF export chats as ``scratchllm chat`` does: transformers' ``apply_chat_template`` on the
exported tokenizer gives the prompt ids scratchllm builds, for the Alpaca and Phi-3 formats a
fine-tuned model remembers and for a Llama-3-style template carried through; its
``generate`` (stopping at generation_config.json's end ids) gives scratchllm's greedy answer.

``transformers`` (its Jinja renderer, its tokenizers, its ``generate``) is the reference;
Hypothesis writes the conversations, from characters that meet at tokenizer boundaries
(spaces, newlines, punctuation, letters). Special token strings inside messages are left out:
scratchllm keeps them as text, ``apply_chat_template`` makes them control tokens unless asked
to sanitize.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from scratchllm.chat import ChatSession, Sampling, Turn, as_messages, choose_format  # noqa: E402
from scratchllm.cli.main import main  # noqa: E402
from scratchllm.data.chat_templates import (chat_template_for, instruction_chat_text,  # noqa: E402
                                            instruction_template)
from scratchllm.data.instruction import encode_example  # noqa: E402
from scratchllm.generate import generate  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel  # noqa: E402
from scratchllm.serve.prompts import chat_prompt  # noqa: E402
from scratchllm.tokenizers import GPT2Tokenizer  # noqa: E402
from scratchllm.tokenizers.hf import HFTokenizer  # noqa: E402
from scratchllm.weights.auto import generation_header, open_model  # noqa: E402
from scratchllm.weights.model_dir import save_model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

BOS, END, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
LLAMA_SPECIALS = [BOS, END, "<|start_header_id|>", "<|end_header_id|>", EOT]
LLAMA3_TEMPLATE = (  # Meta's Llama 3 Instruct template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CORPUS = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n### Response:\n<|user|>\n<|assistant|>:\n"
          "Name three colours. Red, green and blue. Be brief! What is 2+2? It is 4. "
          "The quick brown fox jumps over the lazy dog. 0123456789 ?!.,:;'\"-()\t ") * 20
SYSTEM = "Be brief."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": " It is 4.\n"},
    {"role": "user", "content": "Name three colours!  "},
]

# Text that meets tokenizer boundaries: runs of spaces and newlines, punctuation, letters.
content = st.text(st.sampled_from(list("ab Z  \n\n\t!?.:'#<|>é1")), max_size=12)
message = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "developer", "user", "user", "assistant", "tool"]),
    "content": content})
messages = st.lists(message, min_size=1, max_size=6)  # transformers refuses none
asked = st.builds(lambda head, last: head + [{"role": "user", "content": last}],
                  messages, content)  # what a chat request sends: ends with the user's message


# Llama 3's pre-tokenizer split: punctuation takes the newlines after it ("?\n\n" is one
# piece), so text encoded in parts differs from the whole more often than with GPT-2's.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_bpe(specials: list[str], llama3: bool = False) -> "tokenizers.Tokenizer":
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return tok


def export(model_dir: Path, out: Path) -> Path:
    assert main(["export", str(model_dir), "--to", "hf", str(out)]) == 0
    return out


def tiny_gpt(vocab: int, context: int = 256) -> GPTModel:
    torch.manual_seed(3)
    return GPTModel(GPTConfig.preset("tiny", vocab_size=vocab, context_length=context)).eval()


# ------------------------------------------------------------------ Alpaca / Phi-3, GPT-2 BPE
@pytest.fixture(scope="module", params=["alpaca", "phi3"])
def gpt2_export(request, tmp_path_factory):
    """A GPT-2-tokenizer model saved as fine-tuned with ``style``, and its HF export."""
    style = request.param
    root = tmp_path_factory.mktemp(f"gpt2-{style}")
    model_dir = save_model_dir(root / "model", tiny_gpt(50257, context=64), GPT2Tokenizer(),
                               metadata={"prompt_style": style})
    out = export(model_dir, root / "hf")
    return style, open_model(model_dir), transformers.AutoTokenizer.from_pretrained(out), out


@settings(max_examples=30)
@given(conversation=messages, generation=st.booleans())
def test_exported_template_renders_scratchllms_text(gpt2_export, conversation, generation):
    style, _, hf_tok, _ = gpt2_export
    rendered = hf_tok.apply_chat_template(conversation, add_generation_prompt=generation,
                                          tokenize=False)
    assert rendered == instruction_chat_text(style, conversation, end_token="<|endoftext|>",
                                             add_generation_prompt=generation)


@settings(max_examples=30)
@given(conversation=asked)
def test_exported_template_gives_the_ids_chat_and_serve_build(gpt2_export, conversation):
    style, loaded, hf_tok, _ = gpt2_export
    prompt_format = choose_format(loaded.tokenizer, loaded.metadata)
    assert prompt_format.name == style  # the model directory remembers how it was tuned
    ours = chat_prompt(prompt_format, conversation)
    assert hf_tok.apply_chat_template(conversation, add_generation_prompt=True,
                                      tokenize=True, return_dict=False) == ours


def test_a_book_conversation_byte_for_byte(gpt2_export):
    """System + two turns, answers and messages with edge whitespace: the text, the ids, and
    the training prompt for the first turn (one example is exactly what training encoded)."""
    style, loaded, hf_tok, out = gpt2_export
    text = hf_tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    ids = hf_tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    tok = loaded.tokenizer
    assert tok.decode(ids) == text and ids.count(tok.eot_id) == 1
    ours = choose_format(tok, loaded.metadata).encode(SYSTEM, [], "What is 2+2?")
    first = hf_tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                       add_generation_prompt=True, tokenize=True,
                                       return_dict=False)
    entry = {"instruction": "What is 2+2?", "input": ""}
    assert first == encode_example(entry, tok, style, response_key=None)["ids"]
    assert tok.decode(ours).startswith(tok.decode(first[:5])) and SYSTEM in tok.decode(ours)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [50256]
    assert generation["pad_token_id"] == 50256
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == instruction_template(style, "<|endoftext|>")


# ------------------------------------------------------------------ a Llama-3-style template
@pytest.fixture(scope="module")
def llama_source(tmp_path_factory) -> Path:
    """A Llama-3-style HF directory written by transformers: BOS-adding tokenizer.json with
    Llama 3's pre-tokenizer, Meta's chat template, two end ids."""
    from tokenizers import processors
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    bpe = train_bpe(LLAMA_SPECIALS, llama3=True)
    bos, end, eot = (bpe.token_to_id(t) for t in (BOS, END, EOT))
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=500_000.0, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=[end, eot])
    torch.manual_seed(4)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[end, eot])
    directory = tmp_path_factory.mktemp("llama") / "source"
    model.save_pretrained(directory)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOT)
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_export(llama_source, tmp_path_factory):
    out = export(llama_source, tmp_path_factory.mktemp("llama-hf") / "hf")
    return transformers.AutoTokenizer.from_pretrained(out), out


@pytest.fixture(scope="module")
def llama_pair(llama_source):
    """The source's transformers tokenizer and its scratchllm chat format."""
    loaded = open_model(llama_source)
    return (transformers.AutoTokenizer.from_pretrained(llama_source),
            choose_format(loaded.tokenizer, loaded.metadata))


@settings(max_examples=20)
@given(exchanges=st.lists(st.tuples(content, content), max_size=3), last=content,
       system=st.none() | content)
def test_llama3_template_is_carried_through(llama_pair, llama_export, exchanges, last, system):
    """Well-formed chats (the source's template has no rule for two user turns in a row)."""
    source_tok, prompt_format = llama_pair
    hf_tok, _ = llama_export
    turns = [Turn(user, answer) for user, answer in exchanges]
    conversation = as_messages(system, turns, last)
    ours = prompt_format.encode(system, turns, last)
    assert prompt_format.name == "template" and ours == chat_prompt(prompt_format, conversation)
    for tok in (hf_tok, source_tok):
        assert tok.apply_chat_template(conversation, add_generation_prompt=True,
                                       tokenize=True, return_dict=False) == ours
    assert hf_tok.apply_chat_template(conversation, add_generation_prompt=True,
                                      tokenize=False) == \
        source_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def test_llama_export_lists_every_end_id(llama_source, llama_export):
    _, out = llama_export
    source = json.loads((llama_source / "generation_config.json").read_text())
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert isinstance(generation.eos_token_id, list)  # <|end_of_text|> and <|eot_id|>
    assert sorted(generation.eos_token_id) == sorted(source["eos_token_id"])
    assert generation.bos_token_id == source["bos_token_id"]


@pytest.fixture(scope="module")
def llama_alpaca(llama_source, tmp_path_factory):
    """The Llama saved as fine-tuned with Alpaca prompts, reopened, and its HF export."""
    loaded = open_model(llama_source)
    root = tmp_path_factory.mktemp("llama-alpaca")
    tuned = save_model_dir(root / "tuned", loaded.model, loaded.tokenizer,
                           metadata={"prompt_style": "alpaca"},
                           generation=generation_header(loaded))
    out = export(tuned, root / "hf")
    return open_model(tuned), transformers.AutoTokenizer.from_pretrained(out)


def test_llama_tuned_with_alpaca_exports_alpaca(llama_alpaca):
    """Fine-tuned with Alpaca prompts, a model with a chat template exports the Alpaca format
    (ending answers with its end token), as ``scratchllm chat`` uses it; no BOS, as trained."""
    reopened, hf_tok = llama_alpaca
    assert chat_template_for(reopened.metadata, reopened.tokenizer) == \
        instruction_template("alpaca", EOT)
    ids = hf_tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    assert ids == chat_prompt(choose_format(reopened.tokenizer, reopened.metadata), CONVERSATION)
    assert ids[0] != reopened.tokenizer.bos_id and ids.count(reopened.tokenizer.eot_id) == 1


@settings(max_examples=30)
@given(conversation=asked)
def test_llama_alpaca_ids_for_any_chat(llama_alpaca, conversation):
    """Llama 3's pre-tokenizer joins punctuation and the newlines after it, across the line
    between a message and the format's text: chat encodes the text whole, as transformers."""
    reopened, hf_tok = llama_alpaca
    prompt_format = choose_format(reopened.tokenizer, reopened.metadata)
    assert hf_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                      return_dict=False) == chat_prompt(prompt_format,
                                                                        conversation)


# ------------------------------------------------------------------ answers: generate vs chat
@pytest.fixture(scope="module")
def answering_dir(tmp_path_factory) -> Path:
    """A tiny GPT taught (60 steps on two Alpaca examples) to answer and then stop
    with its end token, saved as fine-tuned with Alpaca prompts."""
    backend = train_bpe(["<|endoftext|>"])
    tokenizer = HFTokenizer(backend, {"eos_token": "<|endoftext|>"})
    model = tiny_gpt(backend.get_vocab_size())
    examples = [{"instruction": "Name three colours.", "input": "", "output": "Red, green, blue."},
                {"instruction": "What is 2+2?", "input": "", "output": "It is 4."}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        for entry in examples:
            ids = torch.tensor([encode_example(entry, tokenizer)["ids"] + [tokenizer.eot_id]])
            loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return save_model_dir(tmp_path_factory.mktemp("answering") / "sft", model, tokenizer,
                          metadata={"prompt_style": "alpaca"})


def test_transformers_generate_answers_as_scratchllm_chat(answering_dir, tmp_path):
    out = export(answering_dir, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    loaded = open_model(answering_dir)
    session = ChatSession(loaded.model, loaded.tokenizer,
                          choose_format(loaded.tokenizer, loaded.metadata),
                          eos_ids=loaded.eos_ids, sampling=Sampling(max_new_tokens=16))
    history: list[dict] = []
    answers = []
    for question in ("Name three colours.", "What is 2+2?"):  # the second with the first before
        reply = session.ask(question)
        answers.append("".join(reply))
        history.append({"role": "user", "content": question})
        inputs = hf_tok.apply_chat_template(history, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        assert inputs["input_ids"][0].tolist() == reply.prompt_ids
        with torch.no_grad():  # generation_config.json: greedy, stops at every end id
            output = hf_model.generate(**inputs, max_new_tokens=16, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        stopped = new[-1] in hf_model.generation_config.eos_token_id
        greedy = generate(loaded.model, reply.prompt_ids, 16, eos_id=loaded.eos_ids)
        assert greedy[len(reply.prompt_ids):] == (new[:-1] if stopped else new)
        assert hf_tok.decode(new, skip_special_tokens=True) == answers[-1]
        history.append({"role": "assistant", "content": answers[-1]})
        if len(history) == 2:  # the taught answer, ended by the end token
            assert stopped and answers[0] == "Red, green, blue."


@settings(max_examples=30)
@given(instruction=content.filter(lambda text: text.strip() != ""))
def test_training_prompt_is_the_prompt_chat_sends(llama_alpaca, instruction):
    """Fine-tuning learns from the prompt ids chat and transformers later send: the prompt is
    encoded whole ("?\\n\\n" is one Llama 3 piece), never instruction and header apart."""
    from scratchllm.data.instruction import encode_example

    reopened, hf_tok = llama_alpaca
    example = encode_example({"instruction": instruction, "input": "", "output": "Yes."},
                             reopened.tokenizer, "alpaca")
    asked = [{"role": "user", "content": instruction}]
    sent = hf_tok.apply_chat_template(asked, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
    assert example["ids"][:example["prompt_len"]] == sent
    assert example["ids"][example["prompt_len"]:] == reopened.tokenizer.encode_ordinary("Yes.")
    assert 0 < example["input_len"] <= example["prompt_len"]


def test_parts_encoded_apart_would_differ(llama_alpaca):
    """Why the prompt is encoded whole: with Llama 3's split, instruction and header encoded
    apart give other ids than the prompt chat sends."""
    from scratchllm.data.instruction import encode_example, format_input, response_prefix

    tokenizer = llama_alpaca[0].tokenizer  # this small BPE learned ":\n\n" as a piece
    entry = {"instruction": "Answer:", "input": "", "output": "Yes."}
    apart = tokenizer.encode_ordinary(format_input(entry)) + \
        tokenizer.encode_ordinary(response_prefix("alpaca"))
    example = encode_example(entry, tokenizer, "alpaca")
    assert apart != example["ids"][:example["prompt_len"]]
