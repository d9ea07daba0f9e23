"""API chat messages to prompt ids (``serve.prompts.chat_prompt``): a model with a chat
template gets the messages as sent, exactly as ``transformers``' ``apply_chat_template``
renders them; our own formats still fold them into (user, answer) exchanges."""

from __future__ import annotations

import pytest

from scratchllm.chat import choose_format
from scratchllm.serve.errors import APIError
from scratchllm.serve.prompts import chat_prompt
from scratchllm.weights.auto import open_model

CONVERSATIONS = {
    "two user messages in a row": [
        {"role": "user", "content": "Tell me a story."},
        {"role": "user", "content": "About a cat who likes fish."}],
    "a system message mid-chat": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "I am fine, thank you."},
        {"role": "system", "content": "Be brief and kind."},
        {"role": "user", "content": "What is the capital of France?"}],
    "two system messages and an answered pair of questions": [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "how are you today?"},
        {"role": "assistant", "content": "Fine."},
        {"role": "user", "content": "And the dog?"}],
}


@pytest.fixture(scope="module")
def template_format(llama_dir):
    loaded = open_model(llama_dir, device="cpu")
    prompt_format = choose_format(loaded.tokenizer, loaded.metadata)
    assert prompt_format.name == "template"
    return prompt_format


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_template_models_get_the_messages_as_sent(template_format, hf_tokenizer, name):
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
    assert chat_prompt(template_format, messages) == expected


def test_developer_is_a_system_message_for_a_template(template_format, hf_tokenizer):
    sent = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat_prompt(template_format, sent) == hf_tokenizer.apply_chat_template(
        as_system, add_generation_prompt=True, tokenize=True, return_dict=False)


def test_instruction_formats_still_join_consecutive_user_messages(alpaca_dir):
    loaded = open_model(alpaca_dir, device="cpu")
    alpaca = choose_format(loaded.tokenizer, loaded.metadata)
    assert alpaca.name == "alpaca"
    two = CONVERSATIONS["two user messages in a row"]
    joined = [{"role": "user", "content": "Tell me a story.\nAbout a cat who likes fish."}]
    assert chat_prompt(alpaca, two) == chat_prompt(alpaca, joined) == alpaca.encode(
        None, [], "Tell me a story.\nAbout a cat who likes fish.")


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "Be brief."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])
def test_the_last_message_must_be_the_users(template_format, alpaca_dir, messages):
    loaded = open_model(alpaca_dir, device="cpu")
    for prompt_format in (template_format, choose_format(loaded.tokenizer, loaded.metadata)):
        with pytest.raises(APIError, match="must be from the user"):
            chat_prompt(prompt_format, messages)
