"""The OpenAI API through the official ``openai`` client against a real server.

References are independent of the server: ``scratchllm.generate`` on the same model for
greedy text, a direct forward pass for log-probabilities, the tokenizer for usage counts.
"""

from __future__ import annotations

import pytest
import torch

from scratchllm.chat import choose_format
from scratchllm.generate import generate

pytest.importorskip("openai")

PROMPT = "The quick brown fox"


def greedy_ids(loaded, prompt_ids, n):
    """The library's greedy tokens; the prompts used here meet no end token within n."""
    new = generate(loaded.model, prompt_ids, n, eos_id=loaded.eos_ids)[len(prompt_ids):]
    assert len(new) == n, "an end token came early: pick another prompt"
    return new


def test_models_lists_the_served_model(client, model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [model_dir.name]
    assert client.models.retrieve(model_dir.name).owned_by == "scratchllm"


def test_completion_greedy_matches_the_library(client, loaded, model_dir):
    ids = loaded.tokenizer.encode_prompt(PROMPT)
    reply = client.completions.create(model=model_dir.name, prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    expected = greedy_ids(loaded, ids, 12)
    assert reply.choices[0].text == loaded.tokenizer.decode(expected)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == 12 and reply.usage.total_tokens == len(ids) + 12
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    # Token ids as the prompt give the same answer; max_tokens defaults to OpenAI's 16.
    again = client.completions.create(model=model_dir.name, prompt=ids, temperature=0)
    assert again.choices[0].text == loaded.tokenizer.decode(greedy_ids(loaded, ids, 16))


def test_several_prompts_in_one_request(client, loaded, model_dir):
    prompts = ["One", "Two three"]
    reply = client.completions.create(model=model_dir.name, prompt=prompts, max_tokens=5,
                                      temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        ids = loaded.tokenizer.encode_prompt(prompt)
        text = loaded.tokenizer.decode(greedy_ids(loaded, ids, 5))
        assert [reply.choices[2 * i + j].text for j in range(2)] == [text, text]
    prompt_tokens = sum(len(loaded.tokenizer.encode_prompt(p)) for p in prompts)
    assert reply.usage.prompt_tokens == prompt_tokens and reply.usage.completion_tokens == 20


def test_chat_uses_the_models_prompt_format(client, loaded, model_dir):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model_dir.name, messages=messages,
                                           max_completion_tokens=10, temperature=0)
    fmt = choose_format(loaded.tokenizer, loaded.metadata)
    from scratchllm.chat import Turn
    ids = fmt.encode("Be brief.", [Turn("Hello", "Hi.")], "Name a colour.")
    expected = loaded.tokenizer.decode(greedy_ids(loaded, ids, 10))
    for stop in fmt.stop_strings:  # plain User:/Assistant: format stops at a new "User:"
        expected = expected.split(stop)[0]
    message = reply.choices[0].message
    assert message.role == "assistant" and message.content == expected
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")


def test_chat_stream_chunks(client, model_dir):
    kwargs = dict(model=model_dir.name, messages=[{"role": "user", "content": "Tell me"}],
                  max_tokens=9, temperature=0, n=2)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert all(c.delta.role is None for c in mine[1:])
        assert [c.finish_reason for c in mine][-1] == whole.choices[index].finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])
        text = "".join(c.delta.content or "" for c in mine)
        assert text == whole.choices[index].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_without_usage(client, model_dir):
    whole = client.completions.create(model=model_dir.name, prompt=PROMPT, max_tokens=7,
                                      temperature=0)
    chunks = list(client.completions.create(model=model_dir.name, prompt=PROMPT,
                                            max_tokens=7, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks) and len({c.id for c in chunks}) == 1


def test_raw_sse_lines(server, model_dir):
    import httpx

    body = {"model": model_dir.name, "prompt": "Hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def _boundary_stop(loaded, ids, n):
    """A stop string that straddles a token boundary of the greedy answer, and the text
    before its first occurrence."""
    pieces = [loaded.tokenizer.decode([t]) for t in greedy_ids(loaded, ids, n)]
    text = "".join(pieces)
    for i in range(2, len(pieces)):
        left, right = pieces[i - 1], pieces[i]
        if len(left) >= 2 and right:
            stop = left[-2:] + right[:1]
            return stop, text[:text.find(stop)]
    pytest.skip("no token pair to straddle")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_is_cut(client, loaded, model_dir, stream):
    ids = loaded.tokenizer.encode_prompt(PROMPT)
    stop, before = _boundary_stop(loaded, ids, 12)
    kwargs = dict(model=model_dir.name, prompt=PROMPT, max_tokens=12, temperature=0,
                  stop=[stop, "never in this text \u2603"])
    if stream:
        chunks = list(client.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        reason = chunks[-1].choices[0].finish_reason  # nothing streamed was part of the stop
    else:
        choice = client.completions.create(**kwargs).choices[0]
        text, reason = choice.text, choice.finish_reason
    assert text == before and stop not in text and reason == "stop"


def test_seed_repeats_sampling_and_n_differs(client, model_dir):
    kwargs = dict(model=model_dir.name, prompt=PROMPT, max_tokens=10, temperature=1.0,
                  top_p=0.95, extra_body={"top_k": 200, "min_p": 0.01})
    a = client.completions.create(**kwargs, seed=7, n=3)
    b = client.completions.create(**kwargs, seed=7, n=3)
    c = client.completions.create(**kwargs, seed=8, n=3)
    texts = [x.text for x in a.choices]
    assert texts == [x.text for x in b.choices]
    assert texts != [x.text for x in c.choices]
    assert len(set(texts)) == 3  # the n choices are independent draws
    assert [x.finish_reason for x in a.choices] == ["length"] * 3
    assert a.usage.completion_tokens == 30


def test_temperature_zero_is_greedy_not_default(client, loaded, model_dir):
    ids = loaded.tokenizer.encode_prompt(PROMPT)
    greedy = loaded.tokenizer.decode(greedy_ids(loaded, ids, 10))
    texts = {client.completions.create(model=model_dir.name, prompt=PROMPT, max_tokens=10,
                                       temperature=0, seed=s).choices[0].text for s in (1, 2)}
    assert texts == {greedy}


def test_completion_logprobs_match_a_forward_pass(client, loaded, model_dir):
    ids = loaded.tokenizer.encode_prompt(PROMPT)
    reply = client.completions.create(model=model_dir.name, prompt=PROMPT, max_tokens=6,
                                      temperature=0, logprobs=3)
    lp = reply.choices[0].logprobs
    new = greedy_ids(loaded, ids, 6)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids + new]))[0]
    reference = torch.log_softmax(logits.float(), dim=-1)[len(ids) - 1:-1]
    got = torch.tensor(lp.token_logprobs)
    assert torch.allclose(got, reference[torch.arange(6), torch.tensor(new)], atol=1e-4)
    assert lp.tokens == [loaded.tokenizer.decode([t]) for t in new]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for row, top in zip(reference, lp.top_logprobs):
        values, index = torch.topk(row, 3)
        expected = {}  # keyed by text: the likeliest of tokens that read the same wins
        for value, i in zip(values.tolist(), index.tolist()):
            expected.setdefault(loaded.tokenizer.decode([i]), value)
        assert list(top) == list(expected)
        assert torch.allclose(torch.tensor(list(top.values())),
                              torch.tensor(list(expected.values())), atol=1e-4)


def test_chat_logprobs_shape(client, model_dir):
    reply = client.chat.completions.create(
        model=model_dir.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)  # greedy = top
    assert "".join(i.token for i in content) == reply.choices[0].message.content


def test_health_reports_the_engine(server):
    import httpx

    body = httpx.get(server.url + "/health").json()
    assert body["status"] == "ok" and body["max_batch"] == 32
