"""The HTTP layer: an OpenAI-compatible API (Starlette) over the engine loop.

Endpoints: GET /health, GET /v1/models, GET /v1/models/{id}, GET /lora-adapters (llama-server's list),
POST /v1/completions and POST /v1/chat/completions (also without the /v1 prefix, as llama-server serves them).
Every error is answered in OpenAI's format, {"error": {"message", "type", "param", "code"}}, with its status:
400 (malformed JSON, a bad parameter, an unknown adapter, a prompt longer than the context), 401 (missing or
wrong API key), 404 (unknown model or path), 405, 413 (body too large), 503 (queue full), 500 (a failure of ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from ..chat import DEFAULT_ROUTE_ON, route_on_choice
from ..rerank import check_margin
from ..router import WEIGHTINGS, _check_temperature, default_weighting
from .defaults import DEFAULT_PREFILL_CHUNK
from .engine import Engine, Job, Route
from .protocol import ApiError, ChatRequest, CompletionRequest, calibrations, parse
from .responses import decode_json, error_response, read_body, respond

log = logging.getLogger("logo_cpp.server")

PUBLIC_PATHS = ("/health", "/v1/health")
RESERVED_MODELS = ("logo", "base")


@dataclass
class ServerConfig:
    """What `logo-cpp serve` was started with (see cli.py for the options' meaning)."""

    n_slots: int = 8
    n_ctx: int = 2048
    max_queue: int = 64
    api_key: Optional[str] = None
    k: int = 1  # measured best on the shipped pool: docs/server/chat-routing.md
    signal: str = "norm"
    probe: str = "base"
    calibration: Optional[str] = None  # None: LoGo's default (logo_cpp.router.DEFAULT_CALIBRATION)
    mixture_weights: Optional[str] = None        # LoGo's ``weights``; None: its default for the calibration
    mixture_temperature: Optional[float] = None  # LoGo's softmax ``temperature``; None: its default
    chat_route_on: str = DEFAULT_ROUTE_ON  # logo_cpp.chat.ROUTE_ON (or an alias); docs/server/chat-routing.md
    layout: str = "auto"   # how slots hold mixtures: auto, stacked, pooled (logo/batch.h)
    # Prompt tokens per prefill evaluation: a request abandoned during its prefill leaves after the chunk in progress.
    n_batch: int = 512
    # Prompt tokens a long prompt's prefill evaluates per decode step (chunked prefill; engine.DEFAULT_PREFILL_CHUNK):
    # the running streams wait one chunk's evaluation per token while it is prefilled, not the whole prompt.
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    model_name: str = ""   # the base model's file name, for /v1/models
    allow_origins: list = field(default_factory=list)
    max_body_bytes: Optional[int] = None  # None: default_max_body_bytes(n_ctx)
    # Compute the router's calibration statistics when the server starts (before it takes requests), not in the
    # first routed request, where every request would wait behind them.
    warm_up: bool = True
    # `--rerank [MARGIN]`: routed requests at k = 1 with calibrated routing rerank a close top two (logo_cpp.rerank)
    # before they start; None: off (the default router alone).
    rerank_margin: Optional[float] = None


def default_max_body_bytes(n_ctx: int) -> int:
    """The largest request body taken by default, in bytes: 512 per context token, at least 1 MiB (1 MiB for
    the default 2048-token context). A prompt that fills the whole context is far smaller (a few bytes per
    token as text, ~7 as token ids, ~40 for text written as JSON \\u escapes), so this leaves room for several
    prompts per request and long chat histories while refusing bodies that could only be too long, before
    they are read, parsed or tokenized."""
    return max(2**20, 512 * int(n_ctx))


def _check_api_key(key) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise TypeError(f"api_key must be a string or None, got {type(key).__name__}")
    if not key.strip():
        raise ValueError("the API key is empty: an empty --api-key (or $LOGO_CPP_API_KEY) would leave the server open "
                         "to anyone; give a non-empty key, or leave the option out to serve without one")
    if key != key.strip():
        # HTTP drops the whitespace around a header's value (RFC 9110 section 5.5), so no client could send it.
        raise ValueError("the API key (--api-key or $LOGO_CPP_API_KEY) begins or ends with whitespace, which an "
                         "Authorization header cannot carry; remove it")


class Server:
    """The model, its pool, the engine and the config: what every handler needs."""

    def __init__(self, model, pool, config: ServerConfig):
        names = pool.names if pool is not None else []
        clash = [n for n in names if n in RESERVED_MODELS]
        if clash:
            raise ValueError(f"adapter name(s) {', '.join(map(repr, clash))} collide with the model ids 'logo' and "
                             f"'base'; rename the file(s)")
        config.chat_route_on = route_on_choice(config.chat_route_on, "chat_route_on")  # an alias becomes its name
        choices, default = calibrations()
        if config.calibration is None:
            config.calibration = default
        elif config.calibration not in choices:
            raise ValueError(f"unknown calibration {config.calibration!r}; use one of {', '.join(choices)}")
        _check_api_key(config.api_key)
        if config.max_body_bytes is None:
            config.max_body_bytes = default_max_body_bytes(config.n_ctx)
        elif isinstance(config.max_body_bytes, bool) or not isinstance(config.max_body_bytes, int) \
                or config.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be an integer >= 1024, got {config.max_body_bytes!r}")
        if config.mixture_weights is not None and config.mixture_weights not in WEIGHTINGS:
            raise ValueError(f"unknown mixture_weights {config.mixture_weights!r}; use one of {', '.join(WEIGHTINGS)}")
        if config.mixture_temperature is not None:
            _check_temperature(config.mixture_temperature)  # ValueError naming temperature
        config.rerank_margin = check_margin(config.rerank_margin)
        if config.rerank_margin is not None and (config.k != 1 or config.calibration == "none"):
            raise ValueError("--rerank applies to routing at k = 1 (--k 1) with calibrated signals (a --calibration "
                             f"other than 'none'); this server has k = {config.k}, calibration {config.calibration!r}")
        self.model = model
        self.pool = pool
        self.config = config
        self.created = int(time.time())
        self.engine = Engine(model, pool, n_slots=config.n_slots, n_ctx=config.n_ctx, max_queue=config.max_queue,
                             n_batch=config.n_batch, layout=config.layout, rerank_margin=config.rerank_margin,
                             prefill_chunk=config.prefill_chunk)
        self.warm_up_seconds: Optional[float] = None
        self.warm_up_routes: list[Route] = []
        if config.warm_up:
            try:
                self.warm_up()
            except BaseException:
                self.engine.close()
                raise

    def warm_up(self) -> None:
        """Computes what routing needs before the first request: the default route's calibration statistics and,
        since the generic prompts' hidden states are then computed anyway, those of every other per-request
        choice of `logo.signal` x `logo.calibration` that uses statistics (~0.2 s each on the default model,
        against ~12 s for the first on 2 cores with a cold disk cache; a warm disk cache makes all of them a
        read). A default calibration without statistics ("none", "spectral", "frobenius") warms nothing: a
        request that asks for "zscore" or "zscore_sq" then computes them on its first use. Sets
        ``warm_up_seconds`` and ``warm_up_routes``; logs one line."""
        from .protocol import STATISTICAL_CALIBRATIONS

        c = self.config
        if not self.adapter_names or c.calibration not in STATISTICAL_CALIBRATIONS:
            return
        t0 = time.perf_counter()
        # Any prompt prepares the statistics (the generic prompts run in the core's own session); this one is cut
        # to the context, so that `serve --ctx-size 1` starts instead of failing on a "context overflow" that
        # named no flag and nothing of the startup.
        probe = self.model.tokenize("warm up", add_special=True, parse_special=False)[: c.n_ctx]
        routes = [Route(kind="logo", method="logo", k=c.k, signal=c.signal, probe=c.probe, calibration=c.calibration)]
        routes += [Route(kind="logo", method="logo", k=c.k, signal=signal, probe=c.probe, calibration=calibration)
                   for signal in ("norm", "entropy") for calibration in STATISTICAL_CALIBRATIONS
                   if (signal, calibration) != (c.signal, c.calibration)]
        for route in routes:
            self.engine.prepare(route, probe)
        self.warm_up_seconds = time.perf_counter() - t0
        self.warm_up_routes = routes
        log.info("routing statistics of %d adapters (calibration %s; signals norm, entropy) ready in %.1f s, before "
                 "the first request", len(self.adapter_names), ", ".join(STATISTICAL_CALIBRATIONS),
                 self.warm_up_seconds)

    @property
    def adapter_names(self) -> list[str]:
        return self.pool.names if self.pool is not None else []

    def close(self) -> None:
        self.engine.close()

    # -- requests to jobs --------------------------------------------------------------------------
    def route_for(self, req) -> Route:
        """The model name picks the default (logo: routed, base: none, an adapter: that one at weight 1);
        `adapters` or `lora` in the body replace it."""
        names = self.adapter_names
        if req.model == "logo":
            route = self._logo_route(req)
        elif req.model == "base":
            route = Route(kind="base", method="base")
        elif req.model in names:
            route = Route(kind="fixed", method="adapter", mixture=((req.model, 1.0),))
        else:
            raise ApiError(404, f"the model '{req.model}' does not exist: use 'logo' (routed per request), 'base', "
                                f"or an adapter name (GET /v1/models lists them)", param="model", code="model_not_found")
        if req.adapters == "auto":
            route = self._logo_route(req)
        elif req.adapters == "none":
            route = Route(kind="base", method="base")
        elif isinstance(req.adapters, dict):
            unknown = [n for n in req.adapters if n not in names]
            if unknown:
                raise ApiError(400, f"adapters: no adapter named {unknown[0]!r} (have: {', '.join(names) or 'none'})",
                               param="adapters", code="adapter_not_found")
            route = Route(kind="fixed", method="adapters", mixture=tuple(req.adapters.items()))
        elif req.lora is not None:
            mixture = []
            for i, entry in enumerate(req.lora):
                if entry.id >= len(names):
                    raise ApiError(400, f"lora[{i}].id: no adapter with id {entry.id} (GET /lora-adapters lists "
                                        f"{len(names)})", param=f"lora.{i}.id", code="adapter_not_found")
                if entry.scale != 0.0:
                    mixture.append((names[entry.id], float(entry.scale)))
            route = Route(kind="fixed", method="lora", mixture=tuple(mixture)) if mixture else Route("base", "lora")
        elif req.logo is not None and route.kind != "logo":
            raise ApiError(400, "logo: options apply to routed requests (model 'logo' or adapters 'auto')", param="logo")
        return route

    def _logo_route(self, req) -> Route:
        if not self.adapter_names:
            return Route(kind="base", method="logo")
        options = req.logo
        c = self.config
        calibration = options.calibration if options and options.calibration else c.calibration
        weights = options.weights if options and options.weights else c.mixture_weights
        resolved = weights or default_weighting(calibration)
        if options and options.temperature is not None and resolved != "softmax":
            raise ApiError(400, f"logo.temperature applies to weights 'softmax' only (this request's weights are "
                                f"{resolved!r}); send logo.weights 'softmax' or leave temperature out",
                           param="logo.temperature")
        temperature = options.temperature if options and options.temperature is not None else c.mixture_temperature
        return Route(kind="logo", method="logo",
                     k=options.k if options and options.k else c.k,
                     signal=options.signal if options and options.signal else c.signal,
                     probe=options.probe if options and options.probe else c.probe,
                     calibration=calibration, weights=weights,
                     # the server's default temperature serves its softmax routers; a "signal" router takes none
                     temperature=temperature if resolved == "softmax" else None)

    def tokens(self, prompt, param: str) -> list[int]:
        model = self.model
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, f"{param}: the prompt is empty", param=param)
            ids = model.tokenize(prompt, add_special=True, parse_special=True)
        else:
            ids = list(prompt)
            if not ids:
                raise ApiError(400, f"{param}: the prompt is empty", param=param)
            bad = next((t for t in ids if not 0 <= t < model.n_vocab), None)
            if bad is not None:
                raise ApiError(400, f"{param}: token id {bad} is out of range [0, {model.n_vocab})", param=param)
        if len(ids) > self.config.n_ctx:
            raise ApiError(400, f"the prompt has {len(ids)} tokens but the context holds {self.config.n_ctx} "
                                f"(--ctx-size)", param=param, code="context_length_exceeded")
        return ids

    def jobs(self, req, prompts: list[tuple[list[int], list[int]]], max_tokens: Optional[int],
             loop: asyncio.AbstractEventLoop) -> list[Job]:
        route = self.route_for(req)
        events: asyncio.Queue = asyncio.Queue()  # shared: one consumer per HTTP request
        seed = req.seed if req.seed is not None else secrets.randbits(62)
        jobs = []
        for prompt, probe in prompts:
            limit = self.config.n_ctx if max_tokens is None else min(max_tokens, self.config.n_ctx)
            for _ in range(req.n):
                sampling = dict(req.sampling(), **req.logprob_options(), max_tokens=limit, seed=seed + len(jobs))
                jobs.append(Job(prompt=prompt, probe_tokens=probe, route=route, sampling=sampling, loop=loop,
                                index=len(jobs), events=events))
        return jobs


# -- handlers ----------------------------------------------------------------------------------------

def build_app(server: Server) -> Starlette:
    """The ASGI application over a started Server (closed on the app's shutdown)."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **server.engine.status()})

    def model_card(name: str, kind: str) -> dict:
        return {"id": name, "object": "model", "created": server.created, "owned_by": "logo-cpp", "kind": kind}

    def cards() -> list[dict]:
        return ([model_card("logo", "routed"), model_card("base", "base")] +
                [model_card(n, "adapter") for n in server.adapter_names])

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": cards()})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        for card in cards():
            if card["id"] == name:
                return JSONResponse(card)
        raise ApiError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")

    async def lora_adapters(request: Request) -> Response:
        # llama-server reports each adapter's global scale, the one a request without `lora` gets. Here no adapter
        # has one: a request's adapters come from its model id (routed by LoGo, one adapter, or none) or its
        # `adapters`/`lora`, so the scale is null rather than 0.0 (which llama-server's users read as "disabled").
        pool = server.pool
        return JSONResponse([{"id": i, "name": n, "path": pool.info(n)["path"], "scale": None}
                             for i, n in enumerate(server.adapter_names)])

    def completion_prompts(body: bytes):
        # In a worker thread: JSON decoding, validation and tokenization of a long prompt take long enough to
        # stall every other request if they ran on the event loop (tokenize releases the GIL).
        req = parse(CompletionRequest, decode_json(body))
        prompts = []
        for i, p in enumerate(req.prompts()):
            ids = server.tokens(p, "prompt" if len(req.prompts()) == 1 else f"prompt.{i}")
            prompts.append((ids, ids))
        return req, prompts

    def chat_prompt(body: bytes):
        req = parse(ChatRequest, decode_json(body))  # in a worker thread, as completion_prompts
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                    for i, m in enumerate(req.messages)]
        try:
            # Contents are plain text, as OpenAI's API reads them: special tokens are parsed in the template's own
            # text only, so a message holding "<|im_end|>" cannot open a turn of another role (Model.chat_tokens).
            # limit: a conversation that cannot fit is refused after n_ctx + 1 tokens' work, not all of its own.
            ids = server.model.chat_tokens(messages, limit=server.config.n_ctx)
        except ValueError as exc:
            raise ApiError(400, f"messages: the chat template cannot format them: {exc}", param="messages") from None
        if len(ids) > server.config.n_ctx:
            raise ApiError(400, f"the prompt has more than {server.config.n_ctx} tokens (the chat template's and the "
                                f"messages') but the context holds {server.config.n_ctx} (--ctx-size)",
                           param="messages", code="context_length_exceeded")
        ids = server.tokens(ids, "messages")
        probe = ids
        if server.config.chat_route_on == "last-user":
            users = [m["content"] for m in messages if m["role"] == "user" and m["content"]]
            if users:
                probe = server.model.tokenize(users[-1], add_special=True, parse_special=False)
        return req, [(ids, probe)]

    async def completions(request: Request) -> Response:
        body = await read_body(request, server.config.max_body_bytes)
        req, prompts = await run_in_threadpool(completion_prompts, body)
        _check_choices(len(prompts) * req.n, server)
        jobs = server.jobs(req, prompts, req.max_tokens, asyncio.get_running_loop())
        return await respond(server.engine, request, jobs, req, chat=False)

    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, server.config.max_body_bytes)
        req, prompts = await run_in_threadpool(chat_prompt, body)
        _check_choices(req.n, server)
        jobs = server.jobs(req, prompts, req.token_limit(), asyncio.get_running_loop())
        return await respond(server.engine, request, jobs, req, chat=True)

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {404: f"no such endpoint: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, code=codes.get(exc.status_code)))

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # A client that goes away while it sends its request (a closed tab, a killed script): nothing failed here.
        log.info("client %s went away before its request to %s was read", _peer(request), request.url.path)
        return Response(status_code=499)

    async def on_internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error: {exc}"))

    routes = [
        HttpRoute("/health", health, methods=["GET"]),
        HttpRoute("/v1/health", health, methods=["GET"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
        HttpRoute("/models", models, methods=["GET"]),
        HttpRoute("/v1/models/{name:path}", model, methods=["GET"]),
        HttpRoute("/lora-adapters", lora_adapters, methods=["GET"]),
        HttpRoute("/v1/completions", completions, methods=["POST"]),
        HttpRoute("/completions", completions, methods=["POST"]),
        HttpRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
        HttpRoute("/chat/completions", chat_completions, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        forced = False
        try:
            yield
        except asyncio.CancelledError:
            # A second Ctrl-C (uvicorn's force exit) skips the application's shutdown, and asyncio cancels this task
            # as the process exits: starlette would log that as a failed shutdown with a CancelledError traceback.
            # The first Ctrl-C already ended every request: end quietly, without waiting long on the engine's step.
            forced = True
        finally:
            server.engine.close(timeout=1.0) if forced else server.close()

    app = Starlette(routes=routes, exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                       ClientDisconnect: on_disconnect, Exception: on_internal_error},
                    lifespan=lifespan)
    if server.config.allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=server.config.allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if server.config.api_key:
        app = ApiKeyCheck(app, server.config.api_key)
    return OriginCheck(app, server.config.allow_origins)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "?"


def _check_choices(n: int, server: Server) -> None:
    if n > server.config.n_slots + server.config.max_queue:
        raise ApiError(400, f"{n} choices (prompts x n) cannot run on {server.config.n_slots} slots and a queue of "
                            f"{server.config.max_queue}", param="n")


class ApiKeyCheck:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <key>` (OpenAI's header)."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS and scope.get("method") != "OPTIONS":
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            # Whitespace around the key is not part of it: HTTP drops it around a header's value (RFC 9110 5.5; h11
            # already has), and RFC 6750 allows several spaces after "Bearer". The configured key has none
            # (_check_api_key), so "Bearer KEY " is KEY and "Bearer KEY x" is not.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = ("missing API key: send 'Authorization: Bearer <key>'" if not header else "invalid API key")
                response = error_response(ApiError(401, message, code="invalid_api_key",
                                                   headers={"WWW-Authenticate": "Bearer"}))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OriginCheck:
    """ASGI middleware: a POST that carries an ``Origin`` header not in --allow-origin is refused with 403.

    Browsers send Origin on every cross-origin POST; curl, the OpenAI SDKs and other programs send none. CORS
    alone does not stop a web page from making this server generate: a "simple request" (a form, or fetch
    with a text/plain body) is sent without a preflight, only its answer is hidden from the page, and the body
    is read as JSON whatever its Content-Type. Checking Content-Type instead would break `curl -d '{...}'`
    (curl sends application/x-www-form-urlencoded). Ollama refuses unlisted origins with 403 too."""

    def __init__(self, app, allowed):
        self.app = app
        self.allowed = frozenset(allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and not self.any:
            origin = dict(scope["headers"]).get(b"origin")
            if origin is not None and origin.decode("latin-1") not in self.allowed:
                shown = origin.decode("latin-1")
                listed = ", ".join(sorted(self.allowed)) or "none"
                response = error_response(ApiError(
                    403, f"a request from the web page origin {shown!r} is refused: browser pages may use this server "
                         f"only from the origins given with --allow-origin (allowed: {listed}); programs that send "
                         f"no Origin header are not affected", code="origin_not_allowed"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def api_key_from_env() -> Optional[str]:
    """$LOGO_CPP_API_KEY, or None when it is not set. Set but empty raises ValueError (an unset shell variable
    expanded into it must not leave the server open)."""
    key = os.environ.get("LOGO_CPP_API_KEY")
    if key is not None and not key.strip():
        raise ValueError("$LOGO_CPP_API_KEY is set but empty: it would leave the server open to anyone; give a "
                         "non-empty key, or unset it to serve without one")
    return key
