"""The web page at ``/`` and the routes only it uses: ratings and the attention view.

The page itself (``static/``: HTML, vanilla JS and CSS, no CDN, so it works offline) is
served without a key: it holds no data and asks for the key in a field. Every route that
reads or writes data (``/v1/...``) stays behind ``--api-key`` like the rest of the API.

* ``POST /v1/ratings``: append one rating of the compare tab (``serve.ratings``).
* ``GET /v1/ratings/summary``: wins, losses, ties and win rate per model or setting.
* ``GET /v1/attention``: the served model's layer and head counts and the token limit.
* ``POST /v1/attention``: ``{"prompt", "layer", "head"}`` -> the tokens (decoded text) and
  that head's attention weights, row i over tokens 0..i (``model.attention_weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from scratchllm.serve.errors import APIError, bad_param
from scratchllm.serve.ratings import RatingsError, RatingsFile, parse_rating
from scratchllm.serve.sequence import token_text

STATIC = Path(__file__).parent / "static"
# Exactly these files, so no request path ever reaches the file system.
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/static/page.css": ("page.css", "text/css; charset=utf-8")}
PUBLIC_PATHS = frozenset(PAGE_FILES) | {"/health", "/favicon.ico"}
MAX_ATTENTION_TOKENS = 128  # a 128 x 128 matrix is what a heatmap can still show


def add_page_routes(app: FastAPI, engine: Any, ratings: RatingsFile | None,
                    read_json) -> None:
    """Register the page and its routes on ``app`` (``read_json`` reads a bounded body)."""
    for route, (name, media_type) in PAGE_FILES.items():
        app.add_api_route(route, _file_route(STATIC / name, media_type), methods=["GET"],
                          include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    def need_ratings() -> RatingsFile:
        if ratings is None:
            raise APIError(404, "this server keeps no ratings; start it with scratchllm serve "
                           "(--ratings FILE)", code="ratings_off")
        return ratings

    @app.post("/v1/ratings")
    async def add_rating(request: Request) -> dict[str, Any]:
        rating = parse_rating(await read_json(request))
        target = need_ratings()
        try:
            record = await run_in_threadpool(target.add, rating)
        except RatingsError as err:  # the file was changed behind the server's back
            raise APIError(409, str(err), code="ratings_file_refused") from None
        file = target.ties if rating["winner"] == "tie" else target.path
        return {"saved": True, "file": str(file), "record": record}

    @app.get("/v1/ratings/summary")
    async def ratings_summary() -> dict[str, Any]:
        target = need_ratings()
        try:
            return await run_in_threadpool(target.summary)
        except RatingsError as err:
            raise APIError(409, str(err), code="ratings_file_refused") from None

    config = engine.model.config

    @app.get("/v1/attention")
    async def attention_shape() -> dict[str, Any]:
        return {"n_layers": config.n_layers, "n_heads": config.n_heads,
                "max_tokens": MAX_ATTENTION_TOKENS}

    @app.post("/v1/attention")
    async def attention(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        prompt, layer, head = body.get("prompt"), body.get("layer", 0), body.get("head", 0)
        if not isinstance(prompt, str) or not prompt:
            raise bad_param("prompt", "must be a non-empty string")
        for name, value, count in (("layer", layer, config.n_layers),
                                   ("head", head, config.n_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
                raise bad_param(name, f"must be an integer in 0..{count - 1} (the model has "
                                f"{count}), got {value!r:.40}")
        return await run_in_threadpool(_attention_map, engine, prompt, layer, head)


def _file_route(path: Path, media_type: str):
    async def serve_file() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return serve_file


def _attention_map(engine: Any, prompt: str, layer: int, head: int) -> dict[str, Any]:
    from scratchllm.model.attention_weights import attention_weights

    tokenizer = engine.tokenizer
    ids = tokenizer.encode_prompt(prompt)
    limit = min(MAX_ATTENTION_TOKENS, engine.context_length)
    if not ids:
        raise bad_param("prompt", "encodes to no tokens; send some text")
    if len(ids) > limit:
        raise APIError(400, f"prompt: {len(ids)} tokens, but the attention view shows at most "
                       f"{limit}; shorten the prompt", param="prompt",
                       code="context_length_exceeded")
    weights = attention_weights(engine.model, ids, layer, head)
    return {"tokens": [token_text(tokenizer, i)[0] for i in ids], "layer": layer, "head": head,
            "weights": [[round(float(w), 5) for w in row[:i + 1]]
                        for i, row in enumerate(weights)]}
