"""A tiny GPT model directory and a real server (uvicorn in a thread) for the serve tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_support import tiny_model_dir

from scratchllm.serve import ServerConfig, build_engine, start_in_thread

MAX_BATCH = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("serve") / "tiny-gpt")


@pytest.fixture(scope="session")
def server(model_dir):
    """One server for the whole session: 32 slots, like the concurrency test needs."""
    engine, model_id, metadata = build_engine(model_dir, device="cpu", max_batch=MAX_BATCH)
    running = start_in_thread(engine, ServerConfig(model_id, metadata=metadata,
                                                   max_body_bytes=64 << 10))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="session")
def loaded(model_dir):
    """The same model opened directly: the reference the server's answers are checked against."""
    from scratchllm.weights.auto import open_model

    return open_model(model_dir, device="cpu", require_tokenizer=True)
