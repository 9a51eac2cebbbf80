"""Chunked prefill in the server (engine.py over ContinuousBatch.begin), through the openai client: a long prompt is
prefilled a chunk per decode step, so a running stream keeps receiving tokens meanwhile, and a short request sent
during the long prefill is answered before it ends. Signals are orders of events, not durations."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

import logo_cpp

from conftest import THREADS
from server_util import TIMEOUT, client, health, serve_test_model, wait_until

LONG = [(7 * i) % 200 + 5 for i in range(800)]  # 100 chunks of 8 tokens
CHUNK = 8
N_CTX = 1024


@pytest.fixture(scope="module")
def reference(model_dir, adapter_dir):
    """The Python API on the served files, with the served context (the long prompt and 400 tokens fit)."""
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=N_CTX, n_threads=THREADS)
    return model, logo_cpp.AdapterPool(model, adapter_dir)


def test_a_running_stream_gets_tokens_while_a_long_prompt_is_prefilled(model_dir, adapter_dir, reference):
    """Before chunked prefill the engine prefilled the whole long prompt between two steps: the running stream got
    no chunk from the long request's admission to its first token. Now each of its 100 chunks is one step, each
    step a token of the running stream: dozens of the running stream's chunks arrive between the long request's
    sending and its first chunk. Both answer what the Python API gives each alone."""
    model, _ = reference
    log, lock = [], threading.Lock()  # ("run" | "long" | "sent", ...) in the order this process saw them

    def note(*entry):
        with lock:
            log.append(entry)

    with serve_test_model(model_dir, adapter_dir, n_slots=2, n_ctx=N_CTX, prefill_chunk=CHUNK) as bg:
        engine = bg.server.engine
        openai = client(bg)

        def running():
            pieces = []
            for chunk in openai.completions.create(model="poem", prompt="the cat sat on the mat", max_tokens=400,
                                                   temperature=0, stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].text:
                    pieces.append(chunk.choices[0].text)
                    note("run")
            return "".join(pieces)

        def long():
            pieces = []
            note("sent")
            for chunk in openai.completions.create(model="base", prompt=LONG, max_tokens=6, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].text:
                    pieces.append(chunk.choices[0].text)
                    note("long")
            return "".join(pieces)

        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            run = ex.submit(running)
            wait_until(lambda: engine._running or run.done(), what="the running stream to start")
            wait_until(lambda: sum(e == ("run",) for e in log) >= 3, what="the running stream's first chunks")
            long_answer = ex.submit(long).result(TIMEOUT)
            run_answer = run.result(TIMEOUT)
        assert health(bg)["slots_busy"] == 0 and engine.stats["steps"] >= len(LONG) // CHUNK

    sent, first = log.index(("sent",)), log.index(("long",))
    during = sum(e == ("run",) for e in log[sent:first])
    # 99 steps decode the running stream before the one that ends the prefill; the client's reading thread may lag
    # a few chunks behind the server. Without chunked prefill this count is at most the step in flight (0-2).
    assert during >= 50, (during, log[sent:first + 1])
    assert run_answer == model.generate("the cat sat on the mat", max_tokens=400, temperature=0.0, ignore_eos=True,
                                        adapters={"poem": 1.0}).text
    assert long_answer == model.generate(LONG, max_tokens=6, temperature=0.0, ignore_eos=True).text


def test_a_short_request_is_answered_during_a_long_prefill(model_dir, adapter_dir, reference):
    """A request whose prompt fits in one chunk, sent while a long prompt is being prefilled, starts at once (the
    long one waits in its own slot) and is answered before the long one's first token."""
    model, _ = reference
    order, lock = [], threading.Lock()
    with serve_test_model(model_dir, adapter_dir, n_slots=2, n_ctx=N_CTX, prefill_chunk=CHUNK) as bg:
        engine = bg.server.engine
        openai = client(bg)

        def long():
            for chunk in openai.completions.create(model="base", prompt=LONG, max_tokens=4, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].text:
                    with lock:
                        order.append("long")
                    break

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            pending = ex.submit(long)
            wait_until(lambda: engine._prefilling is not None or pending.done(), what="the long prefill to begin")
            short = openai.completions.create(model="math", prompt="Numbers 12345", max_tokens=3, temperature=0)
            with lock:
                order.append("short")
            pending.result(TIMEOUT)
    assert order == ["short", "long"]
    assert short.choices[0].text == model.generate("Numbers 12345", max_tokens=3, temperature=0.0,
                                                   adapters={"math": 1.0}).text
