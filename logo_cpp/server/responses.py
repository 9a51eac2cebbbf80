"""OpenAI's response formats over the engine's events: whole responses, server-sent event chunks ending in
`data: [DONE]`, usage counts, the routing extension field, and errors; every exchange watches its client, so one
that goes away cancels its jobs at once."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any, AsyncIterator, Optional

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .engine import Job
from .logprobs import CompletionLogprobs, chat_content, chat_logprobs
from .protocol import ApiError

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
DISCONNECTED = object()


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _too_large(limit: int) -> ApiError:
    size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
    # Connection: close: the rest of the body is not read (beyond what _drop_rest took), so the connection cannot
    # carry another request.
    return ApiError(413, f"the request body is larger than this server's limit of {size} (--max-body-mb; by "
                         f"default 512 bytes per context token, at least 1 MiB: a prompt that fills the context is "
                         f"far smaller)", code="request_too_large", headers={"Connection": "close"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 past ``limit`` bytes (by its Content-Length before reading anything,
    else as soon as the bytes read pass it). A client that goes away meanwhile raises ClientDisconnect."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        # Refused by the header. A client that waits for "100 Continue" before sending gets the 413 instead; one
        # that sends has what it sent dropped until it pauses (a declared length need not be the real one: a
        # client that declared 1 TB and sent 10 bytes waited forever for an answer).
        if "100-continue" not in request.headers.get("expect", "").lower():
            await _drop_rest(request, 0)
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            await _drop_rest(request, len(body))
            raise _too_large(limit)
    return bytes(body)


DROP_LIMIT = 256 * 2**20
DROP_IDLE_SECONDS = 0.25


async def _drop_rest(request: Request, read: int) -> None:
    """Reads and drops the rest of a body that is too large, so that a client still sending it gets the 413
    instead of a connection reset: until the body ends, DROP_LIMIT bytes in all were read (milliseconds), or
    nothing came for DROP_IDLE_SECONDS (a client that sends less than it declared, or stalls)."""
    receive = request.receive
    while read <= DROP_LIMIT:
        try:
            message = await asyncio.wait_for(receive(), DROP_IDLE_SECONDS)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return  # the client went away
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """json's object hook: an object naming one key twice is refused. RFC 8259 leaves its meaning open (parsers
    keep the first, the last, or fail), so a request such as {"max_tokens": 2, "max_tokens": 3} has no one answer
    the client surely meant."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def decode_json(body: bytes) -> Any:
    """The decoded JSON value of a body (400 for an empty or malformed one, or an object with a repeated key)."""
    if not body:
        raise ApiError(400, "the request body is empty: a JSON object is expected")
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ApiError(400, f"the request body names the key {str(exc)[:100]!r} twice in one object: give each "
                            f"key once", param=str(exc)[:100]) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, an int of >4300 digits, deep nesting
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None


class Exchange:
    """The jobs of one HTTP request and the events they produce, with the client's disconnection watched:
    a client that goes away cancels its jobs at once, freeing their slots."""

    def __init__(self, engine, request: Request, jobs: list[Job]):
        self.engine, self.request, self.jobs = engine, request, jobs
        self.queue = jobs[0].events
        self.done = 0
        self._watch: Optional[asyncio.Task] = None

    async def __aenter__(self):
        self.engine.submit(self.jobs)
        self._watch = asyncio.create_task(self._watch_disconnect())
        return self

    async def __aexit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for job in self.jobs:
            self.engine.cancel(job)

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                for job in self.jobs:
                    self.engine.cancel(job)
                self.queue.put_nowait(DISCONNECTED)
                return

    async def next(self):
        """(job index, kind, payload); raises the job's ApiError, or ClientDisconnect."""
        return self._unpack(await self.queue.get())

    def ready(self) -> list:
        """The events already waiting, without blocking (a stream behind by several tokens sends them at once)."""
        events = []
        while not self.queue.empty():
            events.append(self._unpack(self.queue.get_nowait()))
        return events

    def _unpack(self, item):
        if item is DISCONNECTED:
            raise ClientDisconnect()
        job, kind, payload = item
        if kind == "error":
            raise payload
        if kind == "done":
            self.done += 1
        return job.index, kind, payload

    @property
    def finished(self) -> bool:
        return self.done == len(self.jobs)


def _usage(jobs: list[Job], done: dict[int, dict]) -> dict:
    prompt = sum(len(p) for p in {id(j.prompt): j.prompt for j in jobs}.values())
    completion = sum(d["tokens"] for d in done.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _routing_field(routings: dict[int, dict], n: int):
    """One routing for a single choice, else one per choice (index order)."""
    return routings.get(0) if n == 1 else [routings.get(i) for i in range(n)]


async def respond(engine, request: Request, jobs: list[Job], req, *, chat: bool) -> Response:
    """The answer to one completion or chat request whose jobs are ready to submit to `engine`."""
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    exchange = Exchange(engine, request, jobs)
    await exchange.__aenter__()
    try:
        # Wait until every job has been routed (or refused) before answering, so that an error found at
        # admission still gets its own status code, streamed or not.
        routings: dict[int, dict] = {}
        early: list = []
        while len(routings) < len(jobs):
            index, kind, payload = await exchange.next()
            if kind == "routing":
                routings[index] = payload
            else:
                early.append((index, kind, payload))
    except ClientDisconnect:
        exchange.close()
        return Response(status_code=499)
    except BaseException:
        exchange.close()
        raise
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = _stream(exchange, early, routings, rid, created, req.model, chat, include_usage)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        texts = {i: [] for i in range(len(jobs))}
        entries: dict[int, list] = {i: [] for i in range(len(jobs))}
        done: dict[int, dict] = {}
        pending = list(early)
        while True:
            for index, kind, payload in pending:
                if kind == "text":
                    texts[index].append(payload)
                elif kind == "logprobs":
                    entries[index].extend(payload)
                elif kind == "done":
                    done[index] = payload
            pending = []
            if exchange.finished:
                break
            pending.append(await exchange.next())
    except ClientDisconnect:
        return Response(status_code=499)
    finally:
        exchange.close()
    choices = []
    piece = engine.model._core.token_piece
    for i in range(len(jobs)):
        text = "".join(texts[i])
        finish = FINISH.get(done[i]["finish_reason"], done[i]["finish_reason"])
        logprobs = None
        if jobs[i].sampling.get("logprobs"):
            logprobs = (chat_logprobs(chat_content(piece, entries[i])) if chat
                        else CompletionLogprobs(piece).take(entries[i]))
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                            "finish_reason": finish})
        else:
            choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
    return JSONResponse({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
        "model": req.model, "system_fingerprint": None, "choices": choices, "usage": _usage(jobs, done),
        "routing": _routing_field(routings, len(jobs)),
    })


def _merge_text(events: list) -> list:
    """Adjacent text and logprobs events of one choice as one ("delta", (text, logprob entries)) event (fewer
    chunks when a client reads slower than tokens come; a chunk carries its tokens' log-probabilities)."""
    merged: list = []
    for index, kind, payload in events:
        if kind not in ("text", "logprobs"):
            merged.append((index, kind, payload))
            continue
        text, entries = (payload, []) if kind == "text" else ("", list(payload))
        if merged and merged[-1][1] == "delta" and merged[-1][0] == index:
            before_text, before_entries = merged[-1][2]
            merged[-1] = (index, "delta", (before_text + text, before_entries + entries))
        else:
            merged.append((index, "delta", (text, entries)))
    return merged


async def _stream(exchange: Exchange, early: list, routings: dict, rid: str, created: int, model: str, chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks as server-sent events, ending with `data: [DONE]`. The first chunk of each choice
    carries its routing (and, for chat, the assistant role). With logprobs a chunk carries those of the tokens
    generated since the last one; its text may lag behind them (text is sent once it is complete UTF-8 and cannot
    begin a stop string), so a chunk may hold log-probabilities and no text."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    announced: set[int] = set()
    done: dict[int, dict] = {}
    piece = exchange.engine.model._core.token_piece
    legacy = {i: CompletionLogprobs(piece) for i in range(len(exchange.jobs))}

    def chunk(index: int, text: Optional[str], finish: Optional[str], entries: Optional[list] = None) -> str:
        logprobs = None
        if entries:
            logprobs = chat_logprobs(chat_content(piece, entries)) if chat else legacy[index].take(entries)
        if chat:
            delta: dict = {}
            if index not in announced:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        body = {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": None,
                "choices": [choice]}
        if index not in announced:
            body["routing"] = routings.get(index)
            announced.add(index)
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if chat:
            for index in range(len(exchange.jobs)):
                yield chunk(index, "", None)
        pending = _merge_text(list(early))
        while True:
            for index, kind, payload in pending:
                if kind == "delta":
                    yield chunk(index, payload[0], None, payload[1])
                elif kind == "done":
                    done[index] = payload
                    yield chunk(index, None if chat else "", FINISH.get(payload["finish_reason"], "stop"))
            pending = []
            if exchange.finished:
                break
            try:
                pending = _merge_text([await exchange.next(), *exchange.ready()])
            except ApiError as exc:
                # A failure after the stream began (a failed decode step, the server shutting down): an error
                # event, which OpenAI's clients raise, then the stream's usual end for clients that wait for it.
                yield f"data: {json.dumps(exc.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
        if include_usage:
            body = {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": None,
                    "choices": [], "usage": _usage(exchange.jobs, done)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    except ClientDisconnect:
        return
    finally:
        exchange.close()
