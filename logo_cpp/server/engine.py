"""The engine loop: one thread owns a C++ ContinuousBatch (``--parallel`` slots) and decodes every running
request together, each with its own adapter mixture.

Between two decode steps the loop drops cancelled requests (their clients went away), then admits waiting
requests into free slots: it routes each one (a LoGo probe, or the fixed mixture it asked for) and starts it. A
prompt of at most ``prefill_chunk`` tokens is prefilled at once and samples its first token; a longer one is
prefilled by the C++ batch a chunk per step (``ContinuousBatch.begin``: chunked prefill, as llama-server does),
each chunk evaluated before the decode step of the running requests, so a long prompt delays their next token by
one chunk's time instead of its whole prefill. One long prompt is prefilled at a time; while it is, the prompts
that fit in one chunk waiting behind it still start (the long ones wait for their turn, in order). A request
cancelled while it is being started stops there: after its routing, or between two chunks of ``n_batch`` prompt
tokens of its prefill (``ContinuousBatch.abort``, called from the asyncio side), so a client gone during a long
prefill frees its slot within one chunk's time. Each step is then one graph evaluation for all running requests
(plus the prefill chunk, if any). Requests beyond the slots wait in a bounded queue; a full queue refuses new ones
(the HTTP layer answers 503).

Results travel to the asyncio side as (job, kind, payload) on each job's queue, handed over with one
``call_soon_threadsafe`` per step; kind is "routing" (dict, first), "logprobs" (the binding's logprob tuples of
the tokens of that step, when the job asked for them; before the step's text), "text" (str), "done" (token counts
and finish reason) or "error" (ApiError).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import inspect
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import _core
from .. import rerank as _rerank
from ..router import LoGo
from .defaults import DEFAULT_PREFILL_CHUNK
from .protocol import ApiError

log = logging.getLogger("logo_cpp.server")
_LOGO_PARAMETERS = inspect.signature(LoGo).parameters


def _shutting_down() -> ApiError:
    """The error of every request a stopping server ends or refuses (waiting, being started or running)."""
    return ApiError(503, "the server is shutting down", code="unavailable")


@dataclass(frozen=True)
class Route:
    """How one request chooses its adapters.

    kind: "logo" (probe and route, with k/signal/probe), "fixed" (``mixture``, {name: weight}), or "base".
    method: what the response reports ("logo", "adapter", "adapters", "lora", "base").
    """

    kind: str
    method: str
    mixture: tuple = ()          # ((name, weight), ...) for "fixed"
    k: int = 20
    signal: str = "norm"
    probe: str = "base"
    calibration: str = "none"
    weights: Optional[str] = None        # LoGo's mixture weights; None: its default for the calibration
    temperature: Optional[float] = None  # LoGo's softmax temperature; None: its default


@dataclass
class Job:
    """One generation (one choice of one HTTP request) as the engine sees it."""

    prompt: list[int]
    probe_tokens: list[int]     # what the router probes (the prompt, or the last user message of a chat)
    route: Route
    sampling: dict              # max_tokens, temperature, top_k, top_p, min_p, seed, stop, ignore_eos, logprobs,
                                # top_logprobs
    loop: asyncio.AbstractEventLoop
    index: int = 0              # the choice it answers in its HTTP response
    id: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = 0.0
    # engine-thread state
    decoder: Any = None
    routing: Optional[dict] = None

    async def next_event(self):
        return await self.events.get()


class Engine:
    """Continuous batching over one model and adapter pool. ``submit`` and ``cancel`` are called from the
    asyncio loop; everything that touches the model runs on the engine's own thread."""

    def __init__(self, model, pool, *, n_slots: int, n_ctx: int, max_queue: int, n_batch: int = 512,
                 layout: str = "auto", rerank_margin: Optional[float] = None,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.model = model
        self.pool = pool
        # `logo-cpp serve --rerank`: routed k = 1 requests with calibrated routing are reranked (logo_cpp.rerank)
        # before they start. The two candidates' greedy answers are generated here, on the engine thread, with the
        # model's own session: the running requests wait meanwhile (a reranked prompt costs about two generations).
        self.rerank_margin = _rerank.check_margin(rerank_margin)
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.max_queue = max_queue
        # The pool decides the slot layout: stacked once for all slots (small pools) or per slot (large ones).
        # Slots that cannot fit are a ValueError from the KV cache's size check, made before anything is allocated.
        self.batch = _core.ContinuousBatch(model._core, n_ctx=n_ctx, n_slots=n_slots, n_batch=n_batch,
                                           pool=pool._core if pool is not None and len(pool) else None, layout=layout,
                                           prefill_chunk=prefill_chunk)
        self._routers: dict[tuple, LoGo] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._cancelled: set[int] = set()
        self._running: dict[int, Job] = {}
        # The job _admit took from the queue and is routing and starting: it holds a slot (the admission limit
        # and /health count it) though it is neither waiting nor running yet.
        self._starting: Optional[Job] = None
        # The job with a long prompt the C++ batch prefills a chunk per step (begin()); it holds a slot too.
        self._prefilling: Optional[Job] = None
        self._stopping = False
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="logo-cpp-engine", daemon=True)
        self._thread.start()

    # -- asyncio side ------------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queues jobs (all or none); raises ApiError(503) when the queue cannot take them."""
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            # Free slots take jobs at once; beyond them at most max_queue wait.
            taken, queued = self._occupancy()
            if queued + len(jobs) > self.max_queue + (self.n_slots - taken):
                raise ApiError(503, f"the server is busy: {taken} of {self.n_slots} slots are running requests and "
                                    f"{queued} requests are waiting (queue limit {self.max_queue}); "
                                    f"retry later", code="server_busy", headers={"Retry-After": "1"})
            now = time.monotonic()
            for job in jobs:
                job.id = next(self._ids)
                job.submitted = now
                self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drops a job wherever it is (waiting, being started or running); harmless after it finished. A job being
        prefilled stops before the prefill's next chunk (the C++ batch's thread-safe abort), not at its end."""
        with self._cond:
            try:
                self._waiting.remove(job)
                return
            except ValueError:
                pass
            if job.id in self._running or job is self._starting or job is self._prefilling:
                self._cancelled.add(job.id)
                self._cond.notify()
                batch = self.batch
                if (job is self._starting or job is self._prefilling) and batch is not None:
                    # False when the engine thread is still routing it: _start then sees the job in _cancelled.
                    batch.abort(job.id)

    def _busy(self) -> int:
        """Slots in use: running requests and those being started or prefilled (call with the lock held)."""
        return len(self._running) + (self._starting is not None) + (self._prefilling is not None)

    def _occupancy(self) -> tuple[int, int]:
        """(slots taken, requests waiting beyond the slots), counted as admission counts them (call with the lock
        held). The engine starts one job at a time, so jobs admitted into free slots sit in ``_waiting`` until
        their turn (for seconds when routing or prefill is slow): they hold their slots, not the queue. Counting
        them as waiting said "1 of 4 slots are running requests and 5 requests are waiting (queue limit 2)"."""
        claimed = self._busy() + len(self._waiting)
        return min(claimed, self.n_slots), max(claimed - self.n_slots, 0)

    def status(self) -> dict:
        """/health's counts: slots_busy (running, being started, or admitted into a free slot and next to
        start) and waiting (beyond the slots, at most queue_limit), as the 503's message counts them."""
        with self._cond:
            taken, queued = self._occupancy()
            return {"slots_total": self.n_slots, "slots_busy": taken, "waiting": queued,
                    "queue_limit": self.max_queue}

    def prepare(self, route: Route, probe_tokens: list[int]) -> dict:
        """Routes ``probe_tokens`` once with ``route`` (a "logo" Route) before the server takes requests, so that
        the router's per-adapter calibration statistics (seconds on a cold disk cache) are computed now instead
        of inside the first request that needs them, where every request would wait behind them. Returns the
        router's timings (seconds). Call it before any request is submitted: it runs on the caller's thread."""
        router = self._router(route)
        return dict(router.route(probe_tokens).timings)

    def shutdown(self) -> None:
        """Stops taking requests and ends every waiting and running one with a 503 error event (streams get an
        error event and ``[DONE]``) without waiting: what a server does when it is told to stop (Ctrl-C), so that
        its connections can finish at once. close() then waits for the engine thread."""
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            starting, prefilling, batch = self._starting, self._prefilling, self.batch
            self._cond.notify()
        for job in (starting, prefilling):
            if job is not None and batch is not None:
                # A request in its prefill would hold the engine thread past uvicorn's graceful timeout (its client
                # then got a bare 500): stop it after the chunk in progress; it is answered with the 503.
                batch.abort(job.id)
        for job in waiting:
            self._send(job, [("error", _shutting_down())])

    def close(self, timeout: float = 10.0) -> None:
        self.shutdown()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            # The batch's KV cache and slot stacks are freed now, and its hold on the model's weights ends (an
            # app that stops an embedded server and closes the model gets the memory back).
            self.batch = None

    # -- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._cancelled or self._running or self._waiting or self._prefilling):
                    self._cond.wait()
                if self._stopping:
                    break
                cancelled, self._cancelled = self._cancelled, set()
            for job_id in cancelled:
                if self._running.pop(job_id, None) is not None:
                    self.batch.cancel(job_id)
                    self.stats["cancelled"] += 1
                elif self._prefilling is not None and self._prefilling.id == job_id:
                    self.batch.cancel(job_id)  # it may have begun before abort() could mark it
                    self._end_prefill(self._prefilling)
            self._admit()
            if self._running or self._prefilling:
                self._step()
        for job_id, job in list(self._running.items()):
            self.batch.cancel(job_id)
            self._send(job, [("error", _shutting_down())])
        self._running.clear()
        if self._prefilling is not None:
            self.batch.cancel(self._prefilling.id)
            self._end_prefill(self._prefilling)

    def _end_prefill(self, job: Job) -> None:
        """A job stopped during its prefill: by its client (gone: nothing to send) or by shutdown() (a 503)."""
        self.stats["prefills_aborted"] += 1
        with self._cond:
            by_client = job.id in self._cancelled or not self._stopping
            self._cancelled.discard(job.id)
            if job is self._prefilling:
                self._prefilling = None
        if by_client:  # its client is gone
            self.stats["cancelled"] += 1
        else:  # shutdown() stopped it: its client still waits for an answer
            self._send(job, [("error", _shutting_down())])

    def _next_job(self) -> Optional[Job]:
        """The waiting job to start now (call with the lock held): the first one, or while a long prompt is being
        prefilled, the first whose prompt fits in one chunk (the C++ batch prefills one long prompt at a time)."""
        if self._prefilling is None:
            return self._waiting.popleft() if self._waiting else None
        chunk = self.batch.prefill_chunk
        for job in self._waiting:
            if len(job.prompt) <= chunk:
                self._waiting.remove(job)
                return job
        return None

    def _admit(self) -> None:
        while len(self._running) + (self._prefilling is not None) < self.n_slots:
            with self._cond:
                if self._stopping:
                    return
                job = self._starting = self._next_job()
                if job is None:
                    return
            try:
                self._start(job)
            except ApiError as exc:
                self._send(job, [("error", exc)])
            except (ValueError, KeyError) as exc:
                self._send(job, [("error", ApiError(400, str(exc.args[0] if exc.args else exc)))])
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the loop
                log.exception("request %d failed to start", job.id)
                self._send(job, [("error", ApiError(500, f"internal error: {exc}"))])
            finally:
                with self._cond:
                    self._starting = None

    def _start(self, job: Job) -> None:
        names, selection, routing = self._mixture(job)
        with self._cond:
            if job.id in self._cancelled:  # its client went away while it was routed: no prefill
                self.stats["cancelled"] += 1
                return
        job.routing = routing
        job.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        s = job.sampling
        args = dict(max_tokens=s["max_tokens"], temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                    min_p=s["min_p"], seed=s["seed"], stop=s["stop"], ignore_eos=s["ignore_eos"],
                    pool=self.pool._core if selection else None, selection=selection,
                    logprobs=s.get("logprobs", False), top_logprobs=s.get("top_logprobs", 0))
        if len(job.prompt) > self.batch.prefill_chunk:
            # Chunked: the next steps prefill it, a chunk each, between the running requests' decode steps; the
            # step that ends it hands its first event to _started.
            event = self.batch.begin(job.id, job.prompt, **args)
            self.stats["started"] += 1
            if event is None:
                with self._cond:  # from starting to prefilling in one step: admission never counts it twice
                    self._starting = None
                    self._prefilling = job
                return
        else:
            # At most one chunk: prefilled at once (the C++ start runs it with the GIL released; cancel() may
            # abort it from the asyncio thread).
            event = self.batch.start(job.id, job.prompt, **args)
            self.stats["started"] += 1
        self._started(job, event)

    def _started(self, job: Job, event) -> None:
        """A job's first event (its prompt prefilled, or its prefill aborted): it runs, or it ended."""
        if event[2] and event[3]["finish_reason"] == "cancelled":  # aborted during its prefill
            self._end_prefill(job)
            return
        events: list = [("routing", job.routing)]
        with self._cond:  # from starting to running in one step: the admission count never sees it twice
            if job is self._starting:
                self._starting = None
            if job is self._prefilling:
                self._prefilling = None
            if not event[2]:
                self._running[job.id] = job
        self._send(job, events + self._translate(job, event))

    def _mixture(self, job: Job):
        """(names, [(pool index, weight)], routing report) for a job's route."""
        route = job.route
        if route.kind == "base":
            return [], [], {"method": route.method, "adapters": []}
        if route.kind == "fixed":
            selection = [(self.pool.index(name), float(w)) for name, w in route.mixture]
            return ([n for n, _ in route.mixture], selection,
                    {"method": route.method, "adapters": [{"name": n, "weight": float(w)} for n, w in route.mixture]})
        r = self._router(route).route(job.probe_tokens)
        reranked = self.rerank_margin is not None and route.k == 1 and route.calibration != "none"
        if reranked:
            s = job.sampling
            _rerank.rerank(self.model, self.pool, job.prompt, r, self.rerank_margin, s["max_tokens"], s["stop"],
                           s["ignore_eos"])
        weights = [float(w) for w in r.weights]
        report = {"method": "logo", "adapters": [{"name": n, "weight": w} for n, w in zip(r.names, weights)],
                  "k": route.k, "signal": route.signal, "probe": route.probe, "calibration": route.calibration,
                  "weights": r.weighting, "temperature": r.temperature,
                  "probe_ms": round(1000 * r.timings.get("probe_seconds", 0.0), 3)}
        if reranked:
            report["rerank"] = dict(r.rerank, rerank_ms=round(1000 * r.timings.get("rerank_seconds", 0.0), 3))
        return r.names, list(zip(r.indices, weights)), report

    def _router(self, route: Route) -> LoGo:
        key = (route.k, route.signal, route.probe, route.calibration, route.weights, route.temperature)
        router = self._routers.get(key)
        if router is None:
            # A LoGo without calibrated routing takes no calibration: its raw signal is calibration "none".
            extra = {"calibration": route.calibration} if "calibration" in _LOGO_PARAMETERS else {}
            extra.update(weights=route.weights, temperature=route.temperature)
            router = self._routers[key] = LoGo(self.model, self.pool, k=route.k, signal=route.signal, probe=route.probe,
                                               **extra)
        return router

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as exc:  # noqa: BLE001 - a failed evaluation fails the running requests, not the server
            log.exception("decode step failed")
            failed = list(self._running.items())
            if self._prefilling is not None:
                failed.append((self._prefilling.id, self._prefilling))
            for job_id, job in failed:
                self.batch.cancel(job_id)
                self._send(job, [("error", ApiError(500, f"decode step failed: {exc}"))])
            self._running.clear()
            with self._cond:
                self._prefilling = None
            return
        self.stats["steps"] += 1
        by_loop: dict = {}
        for event in events:
            prefilled = self._prefilling
            if prefilled is not None and event[0] == prefilled.id:  # its prefill's last chunk (or its abort)
                self._started(prefilled, event)
                continue
            job = self._running.get(event[0])
            if job is None:
                continue
            if event[2]:
                del self._running[event[0]]
            by_loop.setdefault(job.loop, []).append((job, self._translate(job, event)))
        for loop, deliveries in by_loop.items():
            loop.call_soon_threadsafe(_deliver, deliveries)

    @staticmethod
    def _translate(job: Job, event) -> list:
        _, text, finished, completion, entries = event
        out = []
        if entries:
            out.append(("logprobs", entries))
        piece = job.decoder.decode(text, final=finished)
        if piece:
            out.append(("text", piece))
        if finished:
            out.append(("done", {"tokens": len(completion["tokens"]), "prompt_tokens": completion["timings"]["n_prompt"],
                                 "finish_reason": completion["finish_reason"], "timings": completion["timings"]}))
        return out

    @staticmethod
    def _send(job: Job, events: list) -> None:
        job.loop.call_soon_threadsafe(_deliver, [(job, events)])


def _deliver(deliveries) -> None:
    for job, events in deliveries:
        for kind, payload in events:
            job.events.put_nowait((job, kind, payload))
