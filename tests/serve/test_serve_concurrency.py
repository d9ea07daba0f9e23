"""32 streaming clients at once: all finish, each with exactly its solo greedy answer and
exact usage, and they really were decoded together."""

from __future__ import annotations

import asyncio

import pytest

from scratchllm.generate import generate

openai = pytest.importorskip("openai")

N_CLIENTS = 32


def _prompt(i: int) -> str:
    return f"Request {i}: " + "tell me a story " * (i % 7)  # lengths differ


async def _stream(client, model, i, max_tokens):
    stream = await client.completions.create(
        model=model, prompt=_prompt(i), max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    text, reason, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            reason = chunk.choices[0].finish_reason or reason
        usage = chunk.usage or usage
    return text, reason, usage


def test_32_concurrent_streams_equal_their_solo_runs(server, loaded, model_dir):
    max_tokens = [4 + (3 * i) % 11 for i in range(N_CLIENTS)]  # they finish at different steps

    async def solo_then_together():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                                    timeout=120)
        solo = [await _stream(client, model_dir.name, i, n) for i, n in enumerate(max_tokens)]
        steps = server.engine.steps
        together = await asyncio.gather(*(_stream(client, model_dir.name, i, n)
                                          for i, n in enumerate(max_tokens)))
        await client.close()
        return solo, together, server.engine.steps - steps

    solo, together, steps = asyncio.run(solo_then_together())
    assert together == solo
    for i, (text, reason, usage) in enumerate(together):
        ids = loaded.tokenizer.encode_prompt(_prompt(i))
        new = generate(loaded.model, ids, max_tokens[i], eos_id=loaded.eos_ids)[len(ids):]
        ended = len(new) < max_tokens[i]  # an end token came first (it counts as generated)
        assert text == loaded.tokenizer.decode(new)
        assert reason == ("stop" if ended else "length")
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(new) + ended)
        assert usage.total_tokens == len(ids) + len(new) + ended
    # One at a time would take sum(max_tokens - 1) decode steps; together they share them.
    assert steps < sum(n - 1 for n in max_tokens) / 4
