"""``serve --compare-model``: a second model beside the first, chosen per request by name."""

from __future__ import annotations

import httpx
import pytest

from serve_support import tiny_model_dir

from scratchllm.cli.main import main
from scratchllm.errors import ConfigError
from scratchllm.generate import generate
from scratchllm.serve import CompareModel, Engine, ServerConfig, create_app, start_in_thread
from scratchllm.weights.auto import open_model


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("compare") / "other-gpt", seed=5)


@pytest.fixture
def pair_server(loaded, other_dir):
    other = open_model(other_dir, device="cpu", require_tokenizer=True)
    compare = CompareModel(Engine(other.model, other.tokenizer, other.eos_ids), "other",
                           other.metadata)
    running = start_in_thread(Engine(loaded.model, loaded.tokenizer, loaded.eos_ids),
                              ServerConfig("first", compare=compare))
    yield running, other
    running.stop()


def test_each_request_runs_on_the_model_it_names(pair_server, loaded):
    server, other = pair_server
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["first", "other"]
    prompt = "The quick brown fox"
    answers = {}
    for name in (None, "first", "other"):
        body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
        if name:
            body["model"] = name
        reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        answers[name] = (reply["model"], reply["choices"][0]["text"])
    for name, model in (("first", loaded), ("other", other)):
        prompt_ids = model.tokenizer.encode_prompt(prompt)
        new = generate(model.model, prompt_ids, 8, eos_id=model.eos_ids)[len(prompt_ids):]
        assert answers[name] == (name, model.tokenizer.decode(new))
    assert answers[None] == answers["first"] and answers["first"] != answers["other"]
    chat = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "other", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert chat.json()["model"] == "other"
    missing = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "model": "third"})
    error = missing.json()["error"]
    assert missing.status_code == 404 and "'first', 'other'" in error["message"]
    assert httpx.get(server.url + "/v1/models/other").json()["id"] == "other"


def test_same_name_twice_is_refused(loaded, model_dir, capsys):
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_ids)
    with pytest.raises(ConfigError, match="both named 'x'"):
        create_app(engine, ServerConfig("x", compare=CompareModel(engine, "x")))
    assert main(["serve", "--model", str(model_dir), "--compare-model", str(model_dir)]) == 2
    assert "--compare-model-name" in capsys.readouterr().err
