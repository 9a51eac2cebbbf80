"""Continuous batching in the C++ core (_core.ContinuousBatch, logo/batch.h): requests that join and leave
between decode steps produce exactly what they produce alone, and bad requests leave the others intact."""

import threading
import time

import pytest

import logo_cpp
from logo_cpp import _core

from conftest import THREADS

PROMPTS = ["Hello world", "the cat sat on the mat", "Numbers 12345", "the dog", "quick brown fox", "the",
           "a b c", "sum list"]
MIXTURES = [{"math": 1.0}, {"sql": 0.5, "poem": 0.5}, {"code": 0.2, "chat": 0.3, "legal": 0.5}, {"mixed": 1.0}, {},
            {"poem": 1.0}, {"math": 0.3, "sql": 0.3, "poem": 0.2, "code": 0.2}, {"chat": 2.0}]


@pytest.fixture(scope="module", params=[("llama-f32.gguf", "stacked"), ("llama-f32.gguf", "pooled"),
                                        ("llama-q8_0.gguf", "stacked"), ("llama-q8_0.gguf", "pooled")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request, model_dir, adapter_dir):
    name, layout = request.param
    model = logo_cpp.Model(model_dir / name, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    selections = [[(pool.index(n), w) for n, w in m.items()] for m in MIXTURES]
    ids = [model.tokenize(p) for p in PROMPTS]
    return model, pool, selections, ids, layout


def new_batch(setup, n_slots, n_ctx=256):
    model, pool, _, _, layout = setup
    batch = _core.ContinuousBatch(model._core, n_ctx=n_ctx, n_slots=n_slots, pool=pool._core, layout=layout)
    assert batch.layout == layout
    return batch


def run(setup, order, n_slots=8, max_tokens=lambda i: 12 + i, **kw):
    """Admits requests in `order` whenever a slot is free (between steps); returns {i: completion}."""
    model, pool, selections, ids, _ = setup
    batch = new_batch(setup, n_slots)
    done, texts, pending = {}, {}, list(order)
    while pending or batch.n_active:
        while pending and batch.n_active < batch.n_slots:
            i = pending.pop(0)
            event = batch.start(i, ids[i], max_tokens=max_tokens(i), temperature=0.0, ignore_eos=True,
                                pool=pool._core, selection=selections[i], **kw)
            events = [event]
            if not event[2]:
                break  # one admission per step: later requests join a batch already running
        else:
            events = []
        events += batch.step()
        for rid, text, finished, completion, _ in events:
            texts[rid] = texts.get(rid, b"") + text
            if finished:
                done[rid] = completion
    for rid, completion in done.items():
        assert texts[rid] == completion["text"]  # the streamed pieces add up to the text
    return done


def test_each_request_generates_what_it_generates_alone(setup):
    alone = {i: run(setup, [i])[i]["tokens"] for i in range(len(PROMPTS))}
    together = run(setup, range(len(PROMPTS)))
    staggered = run(setup, [5, 0, 7, 2, 1, 6, 3, 4], n_slots=3)  # slots freed and refilled, requests moved
    for i in range(len(PROMPTS)):
        assert together[i]["tokens"] == alone[i]
        assert staggered[i]["tokens"] == alone[i]
        assert together[i]["finish_reason"] == "length" and len(alone[i]) == 12 + i


def test_alone_equals_the_python_api(setup):
    model = setup[0]
    for i in (0, 1, 4):
        out = run(setup, [i])[i]
        api = model.generate(PROMPTS[i], max_tokens=12 + i, temperature=0.0, ignore_eos=True,
                             adapters=MIXTURES[i] or None)
        assert out["tokens"] == api.tokens


def test_cancel_frees_the_slot_and_the_others_go_on(setup):
    model, pool, selections, ids, _ = setup
    alone = {i: run(setup, [i], max_tokens=lambda i: 16)[i]["tokens"] for i in (0, 1, 2)}
    batch = new_batch(setup, 2)
    for i in (0, 1):
        batch.start(i, ids[i], max_tokens=16, temperature=0.0, ignore_eos=True, pool=pool._core, selection=selections[i])
    for _ in range(3):
        batch.step()
    assert batch.cancel(0) and not batch.cancel(0)
    assert batch.active() == [1] and batch.n_active == 1
    first = batch.start(2, ids[2], max_tokens=16, temperature=0.0, ignore_eos=True, pool=pool._core,
                        selection=selections[2])
    assert not first[2]
    results = {}
    while batch.n_active:
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                results[rid] = completion["tokens"]
    assert results[1] == alone[1] and results[2] == alone[2]


def test_bad_requests_leave_the_batch_intact(setup):
    model, pool, selections, ids, _ = setup
    expected = run(setup, [0], max_tokens=lambda i: 10)[0]["tokens"]
    batch = new_batch(setup, 2, n_ctx=64)
    start = dict(max_tokens=10, temperature=0.0, ignore_eos=True)
    batch.start(7, ids[0], pool=pool._core, selection=selections[0], **start)
    with pytest.raises(ValueError, match="already running"):
        batch.start(7, ids[1], **start)
    with pytest.raises(ValueError, match="empty prompt"):
        batch.start(8, [], **start)
    with pytest.raises(logo_cpp.ContextOverflowError, match="65 tokens but a slot holds 64"):
        batch.start(8, [5] * 65, **start)
    with pytest.raises(ValueError, match="adapter index 99 is out of range"):
        batch.start(8, ids[1], pool=pool._core, selection=[(99, 1.0)], **start)
    with pytest.raises(ValueError, match="finite"):
        batch.start(8, ids[1], pool=pool._core, selection=[(0, float("nan"))], **start)
    with pytest.raises(ValueError, match="top_p"):
        batch.start(8, ids[1], top_p=0.0, max_tokens=4)
    with pytest.raises(ValueError, match="token id"):
        batch.start(8, [10**6], **start)
    batch.start(8, ids[1], **start)
    with pytest.raises(ValueError, match="no free slot"):
        batch.start(9, ids[2], **start)
    assert batch.active() == [7, 8]
    results = {}
    while batch.n_active:
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                results[rid] = completion
    assert results[7]["tokens"] == expected


def test_requests_end_at_eos_stop_strings_max_tokens_and_a_full_context(setup):
    model, pool, selections, ids, _ = setup
    batch = new_batch(setup, 2, n_ctx=16)
    rid, text, finished, completion, _ = batch.start(0, ids[0], max_tokens=0)
    assert finished and completion["finish_reason"] == "length" and completion["tokens"] == []
    batch.start(1, ids[1], max_tokens=100, temperature=0.0, ignore_eos=True)
    results = {}
    while batch.n_active:
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                results[rid] = completion
    # The context holds 16 positions: the prompt's, then one per generated token but the last.
    assert results[1]["finish_reason"] == "length"
    assert len(ids[1]) + len(results[1]["tokens"]) == 16 + 1
    # A stop string cuts the text before its first occurrence and ends the request.
    free = run(setup, [3], max_tokens=lambda i: 24)[3]
    for token in free["tokens"][6:]:
        piece = model._core.token_piece(token)
        try:
            stop = piece.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if stop.strip():
            break
    else:
        pytest.fail("no generated token is a whole UTF-8 piece")
    stopped = run(setup, [3], max_tokens=lambda i: 24, stop=[stop])[3]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][:free["text"].index(stop.encode())]


def test_automatic_layout_and_adapters_added_after_the_batch(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=128, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "math.gguf", adapter_dir / "sql.gguf"])
    # Two rank-8/4 adapters: one pooled stack of 64 ranks per weight costs what one slot's slice costs.
    assert _core.ContinuousBatch(model._core, n_ctx=128, n_slots=4, pool=pool._core).layout == "pooled"
    assert _core.ContinuousBatch(model._core, n_ctx=128, n_slots=1, pool=pool._core).layout == "pooled"
    # 20 more rank-16 adapters: 372 ranks on attn_q, more than 4 slots' slices (4 x 64) but not 16 slots'.
    other = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=128, n_threads=THREADS)
    big = logo_cpp.AdapterPool(other, adapter_dir)
    for i in range(20):
        big.add(adapter_dir / "poem.gguf", name=f"poem{i}")
    assert _core.ContinuousBatch(other._core, n_ctx=128, n_slots=4, pool=big._core).layout == "stacked"
    assert _core.ContinuousBatch(other._core, n_ctx=128, n_slots=16, pool=big._core).layout == "pooled"
    with pytest.raises(ValueError, match="another model"):
        _core.ContinuousBatch(model._core, n_slots=2, pool=big._core)
    with pytest.raises(ValueError, match="unknown layout"):
        _core.ContinuousBatch(model._core, n_slots=2, layout="sideways")

    # A pooled batch meets an adapter added to the pool after it was made: the stacks grow, and the request
    # already running goes on unchanged.
    ids = model.tokenize("the cat sat on the mat")
    batch = _core.ContinuousBatch(model._core, n_ctx=128, n_slots=2, pool=pool._core, layout="pooled")
    start = dict(max_tokens=12, temperature=0.0, ignore_eos=True, pool=pool._core)
    batch.start(0, ids, selection=[(0, 1.0)], **start)
    batch.step()
    pool.add(adapter_dir / "poem.gguf")
    batch.start(1, ids, selection=[(pool.index("poem"), 0.5), (1, 0.5)], **start)
    done = {}
    while batch.n_active:
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                done[rid] = completion["tokens"]
    for rid, mixture in ((0, {"math": 1.0}), (1, {"poem": 0.5, "sql": 0.5})):
        expected = model.generate(ids, max_tokens=12, temperature=0.0, ignore_eos=True, adapters=mixture)
        assert done[rid] == expected.tokens


def test_abort_stops_a_prefill_between_chunks_and_the_others_go_on(model_dir, adapter_dir):
    """ContinuousBatch.abort from another thread (a server's HTTP side) while start() prefills a long prompt in
    chunks of n_batch tokens: the prefill stops after the chunk in progress, its slot is free, and the request
    that was running beside it generates exactly what the Python API generates for it alone."""
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=1024, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    batch = _core.ContinuousBatch(model._core, n_ctx=1024, n_slots=2, n_batch=2, pool=pool._core)
    short = model.tokenize("the cat sat on the mat")
    long = [(7 * i) % 200 + 5 for i in range(900)]
    greedy = dict(temperature=0.0, ignore_eos=True)
    mixture = [(pool.index("sql"), 0.5), (pool.index("poem"), 0.5)]
    assert not batch.abort(1)  # nothing runs: nothing is marked, nothing remembered

    batch.start(1, short, max_tokens=20, pool=pool._core, selection=mixture, **greedy)
    tokens = {1: []}
    done = {}

    def step():
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                done[rid] = completion
    for _ in range(4):
        step()
    # The long prompt's whole prefill (max_tokens 1: it ends at once, its slot free again).
    full = batch.start(2, long, max_tokens=1, **greedy)
    assert full[2] and full[3]["finish_reason"] == "length" and batch.active() == [1]
    full_seconds = full[3]["timings"]["prefill_seconds"]

    # Again, aborted from another thread a tenth of the way in.
    aborted_at = []

    def abort_soon():
        time.sleep(full_seconds / 10)
        while not batch.abort(3):  # True once request 3 is being started
            time.sleep(0.001)
        aborted_at.append(time.perf_counter())

    thread = threading.Thread(target=abort_soon)
    thread.start()
    rid, text, finished, completion, _ = batch.start(3, long, max_tokens=8, **greedy)
    returned = time.perf_counter()
    thread.join()
    assert rid == 3 and finished and text == b""
    assert completion["finish_reason"] == "cancelled" and completion["tokens"] == []
    assert batch.active() == [1] and batch.n_active == 1
    # It stopped well before the prefill would have ended (one chunk of 2 tokens is 1/450 of it).
    assert completion["timings"]["prefill_seconds"] < full_seconds / 2, (completion["timings"], full_seconds)
    assert returned - aborted_at[0] < full_seconds / 4
    assert not batch.abort(3)  # it ended: nothing to mark

    # The freed slot takes a new request; both go on as if nothing happened.
    batch.start(4, short, max_tokens=6, **greedy)
    while batch.n_active:
        step()
    alone = model.generate(short, max_tokens=20, adapters={"sql": 0.5, "poem": 0.5}, **greedy)
    assert done[1]["tokens"] == alone.tokens and done[1]["finish_reason"] == "length"
    assert done[4]["tokens"] == model.generate(short, max_tokens=6, **greedy).tokens

    # A running request marked by abort ends when the next step begins: a "cancelled" event, no new token.
    batch.start(5, short, max_tokens=20, **greedy)
    batch.start(6, short, max_tokens=20, pool=pool._core, selection=mixture, **greedy)
    step()
    assert batch.abort(5)
    events = batch.step()
    cancelled = [e for e in events if e[0] == 5]
    assert len(cancelled) == 1 and cancelled[0][2] and cancelled[0][3]["finish_reason"] == "cancelled"
    assert cancelled[0][1] == b"" and len(cancelled[0][3]["tokens"]) == 2  # the first token and one step's
    assert batch.active() == [6] and not batch.abort(5) and not batch.cancel(5)
    while batch.n_active:
        step()
    assert done[6]["tokens"] == alone.tokens
