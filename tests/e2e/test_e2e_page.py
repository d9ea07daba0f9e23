"""The web page of ``scratchllm serve`` in a real browser: Debian's Chromium, headless.

``scratchllm serve`` runs as a user starts it (a subprocess, with ``--api-key`` and
``--ratings``); Selenium drives ``/usr/bin/chromium`` through Debian's matching
``/usr/bin/chromedriver`` (no browser download). The page must: stream a chat answer equal
to the server's own greedy answer, save a blind comparison as a preference pair that
``scratchllm finetune dpo --data`` then trains on, show the win rates, and draw an
attention heatmap. Without Chromium the test is skipped, except under CI (``CI=true``),
where a missing browser is a failure: ``make test`` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from e2e_support import start_serve
from scratchllm.data.preference import load_preference_data

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--window-size=1280,1000"]
KEY = "page-key"
TIMEOUT = 60


def _browser_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    message = (f"no {' or '.join(missing)}: install Debian's browser with `apt-get install -y "
               "chromium chromium-driver` (make test does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
        message = "no selenium: pip install -e '.[test]' (make test does)"
    if not missing:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI is set but there is {message}")
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(lambda d: condition())
    except Exception as err:  # a timeout: say what the page showed
        status = driver.find_element("id", "status").text
        raise AssertionError(f"the page never showed {what} (status: {status!r})") from err


def _type(driver, element_id: str, text: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(text)


def _text(driver, element) -> str:
    """The element's exact text (Selenium's ``.text`` folds whitespace and drops control
    characters, which a tiny random model produces)."""
    return driver.execute_script("return arguments[0].textContent", element)


def _chat_answer(base: str, prompt: str, max_tokens: int) -> str:
    reply = httpx.post(f"{base}/v1/chat/completions", timeout=TIMEOUT, trust_env=False,
                       headers={"Authorization": f"Bearer {KEY}"},
                       json={"messages": [{"role": "user", "content": prompt}],
                             "temperature": 0, "max_tokens": max_tokens})
    return reply.json()["choices"][0]["message"]["content"]


@pytest.fixture
def page(cli_runner, gpt2_hf_dir, llama_hf_dir, tmp_path):
    """``scratchllm serve --api-key ... --ratings FILE`` on the tiny GPT-2, the tiny Llama
    beside it (``--compare-model``); (base URL, ratings file)."""
    ratings = tmp_path / "my-ratings.json"
    server, base = start_serve(cli_runner, ["--model", gpt2_hf_dir, "--api-key", KEY,
                                            "--ratings", ratings, "--model-name", "tiny",
                                            "--compare-model", llama_hf_dir,
                                            "--compare-model-name", "tiny-llama"])
    try:
        yield base, ratings
    finally:
        cli_runner.signal(server, signal.SIGTERM)
        done = cli_runner.finish(server, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr


def test_chat_compare_results_and_attention_in_chromium(browser, page, cli, gpt2_hf_dir,
                                                        tmp_path):
    base, ratings = page
    driver = browser
    driver.get(base + "/")
    by_id = lambda name: driver.find_element("id", name)  # noqa: E731
    _type(driver, "api-key", KEY + "\t")  # the key field's change event loads the model list
    _wait(driver, lambda: by_id("model-name").text == "tiny and tiny-llama",
          "the served models' names")

    # Chat: a greedy answer streams in over several chunks and equals the API's own answer.
    _type(driver, "chat-temperature", "0")
    _type(driver, "chat-max-tokens", "24")
    _type(driver, "chat-input", "Every effort moves you")
    by_id("chat-send").click()

    def finished() -> bool:
        bubbles = driver.find_elements("css selector", ".msg.assistant")
        return bool(bubbles) and bubbles[-1].get_attribute("data-done") == "true"

    _wait(driver, finished, "a finished chat answer")
    bubble = driver.find_elements("css selector", ".msg.assistant")[-1]
    expected = _chat_answer(base, "Every effort moves you", 24)
    assert expected.strip() and _text(driver, bubble) == expected
    assert int(bubble.get_attribute("data-chunks")) >= 2  # streamed, not one block
    assert not driver.find_elements("css selector", ".msg.error")

    # Compare & rate: GPT-2 greedy against the Llama sampled (the defaults once a compare
    # model is served), A wins, the row lands in the ratings file.
    by_id("tab-compare").click()
    from selenium.webdriver.support.ui import Select

    assert Select(by_id("cmp1-model")).first_selected_option.text == "tiny"
    assert Select(by_id("cmp2-model")).first_selected_option.text == "tiny-llama"
    prompt = "Name a colour."
    _type(driver, "cmp-prompt", prompt)
    _type(driver, "cmp1-seed", "11")
    _type(driver, "cmp2-seed", "12")
    _type(driver, "cmp-max-tokens", "16")
    by_id("cmp-run").click()
    _wait(driver, lambda: by_id("rate-a").is_enabled(), "both answers ready to rate")
    answer_a, answer_b = _text(driver, by_id("cmp-a-text")), _text(driver, by_id("cmp-b-text"))
    by_id("rate-a").click()
    _wait(driver, lambda: by_id("cmp-status").text.startswith("Saved"), "the rating saved")
    assert str(ratings) in by_id("cmp-status").text
    entries = load_preference_data(ratings)  # what `finetune dpo --data` reads
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["instruction"], entry["input"]) == (prompt, "")
    assert (entry["chosen"], entry["rejected"]) == (answer_a, answer_b) and answer_a.strip()
    labels = {entry["chosen_model"], entry["rejected_model"]}
    assert labels == {"tiny · temperature 0, top-p 1", "tiny-llama · temperature 1, top-p 0.9"}
    # A tie goes to the sibling file, never into the pairs DPO trains on.
    by_id("cmp-run").click()
    _wait(driver, lambda: by_id("rate-tie").is_enabled(), "a second pair ready to rate")
    by_id("rate-tie").click()
    _wait(driver, lambda: by_id("cmp-status").text.startswith("Saved"), "the tie saved")
    assert len(load_preference_data(ratings)) == 1
    ties = json.loads(ratings.with_name("my-ratings.ties.json").read_text())
    assert len(ties) == 1 and ties[0]["tie"] is True and ties[0]["instruction"] == prompt

    # Results: the winner's setting has one win; both have the tie.
    by_id("tab-results").click()
    _wait(driver, lambda: len(driver.find_elements("css selector", "#results-table tbody tr"))
          == 2, "two rows of win rates")
    rows = [[cell.text for cell in row.find_elements("tag name", "td")]
            for row in driver.find_elements("css selector", "#results-table tbody tr")]
    by_label = {row[0]: row[1:5] for row in rows}
    assert by_label[entry["chosen_model"]] == ["2", "1", "0", "1"]
    assert by_label[entry["rejected_model"]] == ["2", "0", "1", "1"]
    assert rows[0][0] == entry["chosen_model"] and rows[0][5] == "75.0%"

    # Attention: layer 1, head 1 of the prompt, drawn as a heatmap.
    by_id("tab-attention").click()
    _wait(driver, lambda: len(by_id("att-layer").find_elements("tag name", "option")) == 2,
          "the layer choices")
    Select(by_id("att-layer")).select_by_value("1")
    Select(by_id("att-head")).select_by_value("1")
    _type(driver, "att-prompt", "Every effort moves you")
    by_id("att-run").click()
    _wait(driver, lambda: by_id("att-canvas").get_attribute("data-tokens"), "a heatmap")
    # The view shows --model's attention: GPT-2's 2 heads, not the compare Llama's 4.
    assert len(by_id("att-head").find_elements("tag name", "option")) == 2
    shape = httpx.post(f"{base}/v1/attention", trust_env=False, json={
        "prompt": "Every effort moves you", "layer": 1, "head": 1},
        headers={"Authorization": f"Bearer {KEY}"}).json()
    assert int(by_id("att-canvas").get_attribute("data-tokens")) == len(shape["tokens"]) > 1
    blue = driver.execute_script("""
        const c = document.getElementById('att-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 2] > d[i] + 40) n++;
        return n;""")
    assert blue > 100  # attention cells are shades of blue; labels and empty cells are not

    # The ratings file trains DPO as it is (the README's command), once it holds a few pairs
    # (a split of one pair leaves no training pair): three more ratings through the route.
    for i in range(3):
        saved = httpx.post(f"{base}/v1/ratings", trust_env=False, headers={
            "Authorization": f"Bearer {KEY}"}, json={
            "prompt": f"Say something kind ({i}).", "answer_a": "You did well.",
            "answer_b": "No.", "winner": "a", "model_a": "x", "model_b": "y"})
        assert saved.status_code == 200, saved.text
    assert len(load_preference_data(ratings)) == 4
    dpo_out = tmp_path / "dpo"
    cli(["finetune", "dpo", "--model", gpt2_hf_dir, "--data", ratings, "--out", dpo_out,
         "--epochs", "1", "--batch-size", "1", "--device", "cpu", "--precision", "fp32",
         "--quiet"])
    metrics = [json.loads(line) for line in (dpo_out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and (dpo_out / "latest").exists()


@pytest.mark.parametrize("ci,outcome", [("", pytest.skip.Exception),
                                        ("true", pytest.fail.Exception)])
def test_a_missing_browser_skips_only_outside_ci(monkeypatch, ci, outcome):
    monkeypatch.setitem(globals(), "CHROMIUM", Path("/nowhere/chromium"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="/nowhere/chromium"):
        _browser_or_skip()
