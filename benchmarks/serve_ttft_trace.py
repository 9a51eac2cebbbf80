"""Where a streamed request's time to first token goes in `logo-cpp serve`, under `logo-cpp bench serve`'s load
(N clients, 2 requests each, 64 tokens, ignore_eos, the shipped model and pool): a diagnostic, not a benchmark.

The server runs in this process (uvicorn in a thread) with its engine's methods wrapped to timestamp each job:
  wait     submitted -> its admission begins (the queue: earlier newcomers' probes and prefills)
  route    the LoGo probe
  prefill  prefill and first token (ContinuousBatch.start)
then, per request, engine start done -> the client sees its first text, and the first token's text itself.
Clients and server share one process (and the GIL), so absolute times are worse than a real run's; the split
is what it answers. Used in session 5 to find why TTFT p95 was 2-4x p50 (docs/bench/serve.md).

    LOGO_CPP_CACHE_DIR=/tmp/cache python benchmarks/serve_ttft_trace.py --clients 4 8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

from logo_cpp.bench import serve as bench
from logo_cpp.server import engine as eng
from logo_cpp.server import main as serve_main

jobs: list = []      # (id, wait, route, prefill, done at, first text)
steps: list = []     # seconds per decode step
client: list = []    # (sent at, first text at)

_start, _mixture, _step, _translate = eng.Engine._start, eng.Engine._mixture, eng.Engine._step, eng.Engine._translate
_stream = bench.stream_completion


def _timed_mixture(self, job):
    t = time.monotonic()
    out = _mixture(self, job)
    job.route_seconds = time.monotonic() - t
    return out


def _timed_start(self, job):
    t = time.monotonic()
    first = []
    eng.Engine._translate = staticmethod(lambda j, event: (first.append(event[1]), _translate(j, event))[1])
    try:
        _start(self, job)
    finally:
        eng.Engine._translate = staticmethod(_translate)
    done = time.monotonic()
    jobs.append((job.id, t - job.submitted, job.route_seconds, done - t - job.route_seconds, done, first[:1]))


def _timed_step(self):
    t = time.monotonic()
    _step(self)
    steps.append(time.monotonic() - t)


def _timed_stream(port, body, timeout=600.0):
    t = time.monotonic()
    out = _stream(port, body, timeout)
    client.append((t, t + out["ttft"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    eng.Engine._mixture, eng.Engine._start, eng.Engine._step = _timed_mixture, _timed_start, _timed_step
    args = SimpleNamespace(model=None, adapters=None, parallel=max(a.clients), ctx_size=1024, port=0, k=1,
                           queue=max(a.clients), threads=a.threads, device="auto", signal="norm", probe="base",
                           calibration=None, chat_route_on="last-user", mixture_layout="auto", api_key=None,
                           allow_origin=[], mixture_weights=None, mixture_temperature=None, batch_size=512)
    loaded = serve_main.load(args)
    server = serve_main.start_in_thread(loaded.app, loaded.server)
    body = lambda p: {"model": "logo", "prompt": p, "max_tokens": 64, "temperature": 0.8, "top_p": 0.95,  # noqa: E731
                      "seed": 1, "ignore_eos": True}
    bench.stream_completion(server.port, body(bench.PROMPTS[0]))  # warm-up (calibration statistics)
    bench.stream_completion = _timed_stream
    try:
        for n in a.clients:
            jobs.clear(), steps.clear(), client.clear()
            out = bench.run_load(server.port, [body(p) for p in bench.PROMPTS], n, 2)
            ms = lambda s: round(s * 1000)  # noqa: E731
            print(f"{n} clients: TTFT p50 {ms(out['ttft_p50'])} ms, p95 {ms(out['ttft_p95'])} ms")
            print("  per job, ms (wait / route / prefill):", ", ".join(f"{ms(w)}/{ms(r)}/{ms(p)}" for _, w, r, p, _, _ in jobs))
            # Jobs and client requests pair up in order of time (both sorted).
            lag = [ms(c[1] - j[4]) for j, c in zip(sorted(jobs, key=lambda j: j[4]), sorted(client, key=lambda c: c[1]))]
            print("  engine start done -> client's first text, ms (sorted):", lag)
            print("  first token's text at start:", [f[0] if f else None for *_, f in jobs])
            print(f"  decode steps: {len(steps)}, median {ms(statistics.median(steps))} ms, max {ms(max(steps))} ms")
    finally:
        server.stop()
        loaded.server.close()


if __name__ == "__main__":
    main()
