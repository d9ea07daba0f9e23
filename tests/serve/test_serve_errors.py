"""Refusals in OpenAI's error shape: 400 naming the field, 401, 404, 413, 429; and a client
that hangs up frees its slot at once."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from serve_support import SlowModel

from scratchllm.serve import Engine, ServerConfig, start_in_thread

openai = pytest.importorskip("openai")


def post(server, path, body, **kwargs):
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


def assert_error(response, status, param=None, *words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    return error


BAD_FIELDS = [
    ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_k": 1.5}, "top_k"), ({"min_p": 2}, "min_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"n": 0}, "n"), ({"n": True}, "n"), ({"stop": ""}, "stop"), ({"stop": ["a", 3]}, "stop"),
    ({"seed": 1.5}, "seed"), ({"logprobs": 99}, "logprobs"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"echo": True}, "echo"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": []}, "prompt"), ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [10 ** 9]}, "prompt"),
]


@pytest.mark.parametrize("fields,param", BAD_FIELDS)
def test_bad_completion_fields_are_400_naming_the_field(server, model_dir, fields, param):
    body = {"model": model_dir.name, "prompt": "Hi", "max_tokens": 2, **fields}
    assert_error(post(server, "/v1/completions", body), 400, param, param)


@pytest.mark.parametrize("fields,param", [
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]},
                                     "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "messages"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": 1}, "logprobs"),
])
def test_bad_chat_fields_are_400(server, model_dir, fields, param):
    body = {"model": model_dir.name, "messages": [{"role": "user", "content": "Hi"}], **fields}
    assert_error(post(server, "/v1/chat/completions", body), 400, param)


def test_openai_client_sees_the_field(client, model_dir):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_dir.name, prompt="Hi", temperature=5)
    assert info.value.status_code == 400 and info.value.body["param"] == "temperature"


def test_context_overflow_names_both_sizes(server, model_dir):
    error = assert_error(post(server, "/v1/completions", {"prompt": [11] * 600}), 400,
                         "prompt", "600 tokens", "512")  # against a 512-token context
    assert error["code"] == "context_length_exceeded"
    body = {"prompt": "Hi", "max_tokens": 600}
    assert_error(post(server, "/v1/completions", body), 400, "max_tokens", "512", "600")
    body = {"messages": [{"role": "user", "content": "word " * 600}]}
    assert_error(post(server, "/v1/chat/completions", body), 400, "messages", "512")


def test_unknown_model_and_route_are_404(server, client):
    error = assert_error(post(server, "/v1/completions", {"model": "gpt-9", "prompt": "x"}),
                         404, "model", "gpt-9")
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert_error(httpx.get(server.url + "/v1/nothing"), 404, None, "/v1/nothing")
    assert_error(httpx.get(server.url + "/v1/completions"), 405, None)


def test_bodies_over_the_limit_are_413(server):
    big = {"prompt": "x" * (70 << 10)}  # the session server takes 64 KiB
    assert_error(post(server, "/v1/completions", big), 413, None, "65,536")

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=30)
    assert_error(response, 413, None)
    assert_error(httpx.post(server.url + "/v1/completions", content=b"{nope"), 400, None, "JSON")


def wait_for(server, key, value, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/health").json()[key] == value:
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"/health never showed {key} = {value}")


@pytest.fixture
def small_server(loaded):
    engine = Engine(SlowModel(loaded.model), loaded.tokenizer, loaded.eos_ids, max_batch=1,
                    max_queue=1)
    running = start_in_thread(engine, ServerConfig("slow", api_key="sekrit"))
    yield running
    running.stop()


def test_api_key_on_every_route_but_health(small_server):
    url = small_server.url
    assert httpx.get(url + "/health").status_code == 200
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions"), ("GET", "/nowhere")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            response = httpx.request(method, url + path, headers=headers, json={})
            assert_error(response, 401, None)
    good = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
    assert good.models.list().data[0].id == "slow"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_full_queue_is_429_and_a_hangup_frees_the_slot(small_server):
    url, auth = small_server.url, {"Authorization": "Bearer sekrit"}
    long = {"prompt": "Hi", "max_tokens": 250, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=long, headers=auth) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")  # running in the only slot
        queued = {}
        waiter = threading.Thread(target=lambda: queued.update(r=httpx.post(
            url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=auth,
            timeout=30)))
        waiter.start()
        wait_for(small_server, "queued", 1)
        error = assert_error(httpx.post(url + "/v1/completions", json={"prompt": "x"},
                                        headers=auth), 429, None, "--max-queue")
        assert error["code"] == "queue_full"
        hung_up = time.monotonic()
    # The first client hung up after one chunk of 250 tokens (5 s at 20 ms a step): its
    # slot goes to the waiting request at once.
    waiter.join(10)
    assert queued["r"].status_code == 200 and time.monotonic() - hung_up < 2.0
    assert wait_for(small_server, "active", 0) - hung_up < 2.0
