"""The web page's routes: static files, ratings (book 8.7 -> DPO data of 8.3), the attention view.

The ratings file is checked with the project's own preference reader (what ``scratchllm
finetune dpo --data`` calls), the attention route against ``model.attention_weights``.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from scratchllm.cli.main import main
from scratchllm.data.preference import PreferenceDataset, load_preference_data
from scratchllm.errors import ConfigError
from scratchllm.model.attention_weights import attention_weights
from scratchllm.serve import Engine, ServerConfig, start_in_thread
from scratchllm.serve.ratings import RatingsError, RatingsFile, ties_path
from scratchllm.utils.outputs import read_marker

AUTH = {"Authorization": "Bearer pagekey"}


@pytest.fixture
def page_server(loaded, tmp_path):
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_ids, max_batch=4)
    ratings = RatingsFile(tmp_path / "prefs.json")
    running = start_in_thread(engine, ServerConfig("tiny", api_key="pagekey", ratings=ratings))
    yield running, ratings
    running.stop()


def rating(winner, prompt="Name a colour.", a="Blue.", b="Seven.", **extra):
    return {"prompt": prompt, "answer_a": a, "answer_b": b, "winner": winner,
            "model_a": "tiny · temperature 0", "model_b": "tiny · temperature 1",
            "settings_a": {"temperature": 0, "seed": 3}, "settings_b": {"temperature": 1},
            **extra}


def test_page_files_are_public_and_data_routes_need_the_key(page_server):
    server, _ = page_server
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/page.js"' in page.text and 'id="att-canvas"' in page.text
    for path, kind in [("/static/page.js", "text/javascript"), ("/static/page.css", "text/css"),
                       ("/favicon.ico", "image/svg+xml")]:
        response = httpx.get(server.url + path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    # Works offline: nothing is fetched from another host.
    for name in ("/", "/static/page.js", "/static/page.css"):
        text = httpx.get(server.url + name).text
        assert "https://" not in text and "//cdn" not in text and "@import" not in text
    assert httpx.get(server.url + "/static/../app.py").status_code in (401, 404)
    for method, path in [("POST", "/v1/ratings"), ("GET", "/v1/ratings/summary"),
                         ("GET", "/v1/attention"), ("POST", "/v1/attention")]:
        assert httpx.request(method, server.url + path, json={}).status_code == 401
    assert httpx.post(server.url + "/", headers={}).status_code == 401  # only GET is public


def test_ratings_file_is_dpo_data_and_ties_stay_out_of_it(page_server, loaded):
    server, ratings = page_server
    post = lambda body: httpx.post(server.url + "/v1/ratings", json=body, headers=AUTH)  # noqa: E731
    assert post(rating("a")).json()["file"] == str(ratings.path)
    assert post(rating("b", prompt="Add 2 and 3.", a="6", b="5")).status_code == 200
    tie = post(rating("tie", prompt="Say hi.", a="Hi.", b="Hello."))
    assert tie.json()["file"] == str(ratings.ties) == str(ties_path(ratings.path))
    entries = load_preference_data(ratings.path)  # the reader `finetune dpo --data` uses
    assert [(e["instruction"], e["chosen"], e["rejected"]) for e in entries] == [
        ("Name a colour.", "Blue.", "Seven."), ("Add 2 and 3.", "5", "6")]
    assert entries[1]["chosen_model"] == "tiny · temperature 1"
    assert entries[1]["rejected_settings"] == {"temperature": 0, "seed": 3}
    assert all(e["input"] == "" and e["rated_at"] for e in entries)
    assert len(PreferenceDataset(entries, loaded.tokenizer)) == 2
    ties = json.loads(ratings.ties.read_text())
    assert [(t["instruction"], t["answer_a"], t["answer_b"], t["tie"]) for t in ties] == [
        ("Say hi.", "Hi.", "Hello.", True)]
    summary = httpx.get(server.url + "/v1/ratings/summary", headers=AUTH).json()
    assert (summary["pairs"], summary["ties"]) == (2, 1)
    # Each label: one win, one loss, one tie -> (1 + 0.5) / 3.
    assert {m["model"]: (m["wins"], m["losses"], m["ties"], m["games"])
            for m in summary["models"]} == {"tiny · temperature 0": (1, 1, 1, 3),
                                            "tiny · temperature 1": (1, 1, 1, 3)}
    assert all(m["win_rate"] == pytest.approx(0.5) for m in summary["models"])


def test_concurrent_ratings_all_land(page_server):
    server, ratings = page_server
    threads = [threading.Thread(target=lambda i=i: httpx.post(
        server.url + "/v1/ratings", json=rating("a", prompt=f"Prompt {i}"), headers=AUTH,
        timeout=30)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    prompts = sorted(e["instruction"] for e in load_preference_data(ratings.path))
    assert prompts == sorted(f"Prompt {i}" for i in range(12))


@pytest.mark.parametrize("body,param", [
    ({"winner": "c"}, "winner"), ({"prompt": ""}, "prompt"), ({"answer_b": 3}, "answer_b"),
    ({"model_a": ""}, "model_a"), ({"settings_b": {"x": [1]}}, "settings_b"),
    ({"input": None}, "input"),
])
def test_bad_ratings_are_400_naming_the_field(page_server, body, param):
    server, ratings = page_server
    response = httpx.post(server.url + "/v1/ratings", json={**rating("a"), **body},
                          headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert not ratings.path.exists()


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", '[{"instruction": "x"}]', "not json"])
def test_a_file_that_is_not_preference_data_is_refused_untouched(tmp_path, content):
    path = tmp_path / "notes.json"
    path.write_text(content)
    with pytest.raises(RatingsError, match="never overwrites") as err:
        RatingsFile(path)
    assert str(path) in str(err.value)
    assert path.read_text() == content
    # The command refuses it before loading a model: one line, exit 2.
    assert main(["serve", "--model", str(tmp_path / "nowhere"), "--ratings", str(path)]) == 2


def test_a_folder_or_a_path_through_a_file_is_refused(tmp_path):
    with pytest.raises(RatingsError, match="is a folder"):
        RatingsFile(tmp_path)
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(RatingsError, match="plain.txt is a file, not a folder"):
        RatingsFile(tmp_path / "plain.txt" / "ratings.json")


def test_a_foreign_ties_sibling_is_refused(tmp_path):
    (tmp_path / "prefs.ties.json").write_text('{"mine": true}')
    with pytest.raises(RatingsError, match="prefs.ties.json"):
        RatingsFile(tmp_path / "prefs.json")


def test_a_file_changed_behind_the_server_is_a_409_and_stays(page_server):
    server, ratings = page_server
    ratings.path.write_text('{"replaced": "by hand"}')
    response = httpx.post(server.url + "/v1/ratings", json=rating("a"), headers=AUTH)
    assert response.status_code == 409 and "not a list of preference records;" in response.json()["error"]["message"]
    assert ratings.path.read_text() == '{"replaced": "by hand"}'


def test_default_folder_is_marked_and_a_foreign_one_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ratings = RatingsFile()
    assert not (tmp_path / "runs").exists()  # nothing is written before the first rating
    ratings.add({"prompt": "p", "input": "", "answer_a": "x", "answer_b": "y", "winner": "a",
                 "model_a": "m", "model_b": "n", "settings_a": {}, "settings_b": {}})
    folder = tmp_path / "runs" / "ratings"
    assert read_marker(folder)["kind"] == "ratings"
    assert len(load_preference_data(folder / "preferences.json")) == 1
    RatingsFile()  # the marked folder is reused
    (folder / ".scratchllm").unlink()
    with pytest.raises(ConfigError, match="not written by scratchllm"):
        RatingsFile()


def test_ratings_off_is_404(server):
    response = httpx.post(server.url + "/v1/ratings", json=rating("a"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "ratings_off"


def test_attention_route_matches_the_library(page_server, loaded):
    server, _ = page_server
    shape = httpx.get(server.url + "/v1/attention", headers=AUTH).json()
    config = loaded.model.config
    assert (shape["n_layers"], shape["n_heads"]) == (config.n_layers, config.n_heads)
    prompt = "Every effort moves you"
    body = httpx.post(server.url + "/v1/attention", headers=AUTH,
                      json={"prompt": prompt, "layer": config.n_layers - 1, "head": 1}).json()
    ids = loaded.tokenizer.encode_prompt(prompt)
    assert "".join(body["tokens"]) == prompt and len(body["tokens"]) == len(ids)
    expected = attention_weights(loaded.model, ids, config.n_layers - 1, 1)
    assert [len(row) for row in body["weights"]] == list(range(1, len(ids) + 1))
    for i, row in enumerate(body["weights"]):
        assert row == pytest.approx(expected[i, :i + 1].tolist(), abs=1e-5)
    too_long = httpx.post(server.url + "/v1/attention", headers=AUTH,
                          json={"prompt": "word " * 300})
    error = too_long.json()["error"]
    assert too_long.status_code == 400 and "at most 128" in error["message"]
    for field, value in [("layer", config.n_layers), ("head", -1), ("layer", "0")]:
        bad = httpx.post(server.url + "/v1/attention", headers=AUTH,
                         json={"prompt": "Hi", field: value})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field
