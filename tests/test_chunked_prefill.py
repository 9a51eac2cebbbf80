"""Chunked prefill in the C++ batch (_core.ContinuousBatch.begin, logo/batch.h): a long prompt is prefilled a chunk
per step() while the running requests keep decoding, and every request still generates what it generates alone
(oracles: the Python API's Model.generate, and llama-cpp-python with flash attention)."""

import math

import pytest

import logo_cpp
from logo_cpp import _core

from conftest import REPACK, THREADS

GREEDY = dict(temperature=0.0, ignore_eos=True)
LONG = [(7 * i) % 200 + 5 for i in range(150)]  # 150 tokens: 10 chunks of 16 (the last one 6)


@pytest.fixture(scope="module")
def model_pool(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=512, n_threads=THREADS, repack=REPACK)
    return model, logo_cpp.AdapterPool(model, adapter_dir)


def collect(events, texts, done):
    for rid, text, finished, completion, _ in events:
        texts[rid] = texts.get(rid, b"") + text
        if finished:
            done[rid] = completion


@pytest.mark.parametrize("layout", ["stacked", "pooled"])
def test_running_requests_decode_while_a_long_prompt_is_prefilled(model_pool, layout):
    """After begin() of a 150-token prompt (chunks of 16), each of the next 9 steps decodes the running requests
    and none starts the long one; the 10th returns its first event (the long one's tokens come after). One
    running request ends meanwhile (its slot freed while the prefill waits in the highest one, another request
    moved), and all of them generate exactly what Model.generate gives each alone."""
    model, pool = model_pool
    batch = _core.ContinuousBatch(model._core, n_ctx=512, n_slots=4, n_batch=512, pool=pool._core, layout=layout,
                                  prefill_chunk=16)
    assert batch.prefill_chunk == 16 and not batch.prefilling
    short = model.tokenize("the cat sat on the mat")
    other = model.tokenize("Numbers 12345")
    mixtures = {1: {"sql": 0.5, "poem": 0.5}, 2: {}, 3: {"math": 1.0}}
    selection = {rid: [(pool.index(n), w) for n, w in m.items()] for rid, m in mixtures.items()}
    texts, done = {}, {}
    collect([batch.start(2, other, max_tokens=4, **GREEDY)], texts, done)  # slot 0; ends during the prefill
    collect([batch.start(1, short, max_tokens=24, pool=pool._core, selection=selection[1], **GREEDY)], texts, done)
    collect(batch.step(), texts, done)

    assert batch.begin(3, LONG, max_tokens=12, pool=pool._core, selection=selection[3], **GREEDY) is None
    assert batch.prefilling and batch.active() == [2, 1]
    chunks = math.ceil(len(LONG) / 16)
    for i in range(chunks - 1):
        events = batch.step()
        assert [e[0] for e in events if e[0] == 3] == []  # the long one has no event before its prefill ends
        assert 1 in [e[0] for e in events]  # the running one got a token in every one of these steps
        collect(events, texts, done)
    assert 2 in done and batch.active() == [1] and batch.prefilling
    events = batch.step()  # the last chunk: the long one's first token, then a decode step for both
    assert [e[0] for e in events] == [3, 1, 3] and not batch.prefilling and batch.active() == [1, 3]
    collect(events, texts, done)
    while batch.n_active:
        collect(batch.step(), texts, done)

    prompts = {1: short, 2: other, 3: LONG}
    lengths = {1: 24, 2: 4, 3: 12}
    for rid in (1, 2, 3):
        alone = model.generate(prompts[rid], max_tokens=lengths[rid], adapters=mixtures[rid] or None, **GREEDY)
        assert done[rid]["tokens"] == alone.tokens, rid
        assert done[rid]["finish_reason"] == "length" and texts[rid] == done[rid]["text"]
    assert done[3]["timings"]["n_prompt"] == len(LONG) and done[3]["timings"]["prefill_seconds"] > 0


def test_chunked_prefill_matches_llama_cpp(model_pool, model_dir, adapter_dir, llama_cpp_oracle):
    """The long prompt prefilled in chunks of 7 tokens (positions and KV rows appended chunk by chunk, beside a
    running request) decodes llama.cpp's greedy tokens."""
    model, pool = model_pool
    batch = _core.ContinuousBatch(model._core, n_ctx=512, n_slots=2, pool=pool._core, prefill_chunk=7)
    batch.start(1, model.tokenize("the dog"), max_tokens=200, **GREEDY)
    mixture = {"math": 0.7, "sql": 0.3}
    batch.begin(2, LONG, max_tokens=16, pool=pool._core, selection=[(pool.index(n), w) for n, w in mixture.items()],
                **GREEDY)
    done = {}
    while 2 not in done:
        collect(batch.step(), {}, done)
    oracle = llama_cpp_oracle(model_dir / "llama-f32.gguf")
    oracle.set_adapters(mixture, adapter_dir)
    try:
        assert done[2]["tokens"] == oracle.greedy(LONG, 16)
    finally:
        oracle.set_adapters({}, adapter_dir)


def test_abort_and_cancel_during_a_multi_step_prefill(model_pool):
    """abort() between two chunks: the next step() returns the request's finished "cancelled" event (no tokens)
    and frees its slot; cancel() frees it at once. The running request is untouched, and a new begin() works."""
    model, pool = model_pool
    batch = _core.ContinuousBatch(model._core, n_ctx=512, n_slots=2, pool=pool._core, prefill_chunk=16)
    short = model.tokenize("the cat sat on the mat")
    batch.start(1, short, max_tokens=40, **GREEDY)
    done = {}
    assert not batch.abort(5)
    batch.begin(5, LONG, max_tokens=8, pool=pool._core, selection=[(pool.index("poem"), 1.0)], **GREEDY)
    collect(batch.step(), {}, done)
    collect(batch.step(), {}, done)
    assert batch.prefilling and batch.abort(5)
    events = batch.step()
    assert events[0][0] == 5 and events[0][2] and events[0][1] == b""
    assert events[0][3]["finish_reason"] == "cancelled" and events[0][3]["tokens"] == []
    assert [e[0] for e in events[1:]] == [1]  # the running one still decoded in that step
    assert not batch.prefilling and batch.active() == [1] and not batch.abort(5) and not batch.cancel(5)

    batch.begin(6, LONG, max_tokens=8, **GREEDY)
    collect(batch.step(), {}, done)
    assert batch.cancel(6) and not batch.prefilling and batch.active() == [1]

    batch.begin(7, LONG[:40], max_tokens=8, **GREEDY)  # the freed slot takes a new prefill
    while batch.n_active or batch.prefilling:
        collect(batch.step(), {}, done)
    assert done[1]["tokens"] == model.generate(short, max_tokens=40, **GREEDY).tokens
    assert done[7]["tokens"] == model.generate(LONG[:40], max_tokens=8, **GREEDY).tokens
    assert 5 not in done and 6 not in done


def test_begin_checks_before_it_changes_anything(model_pool):
    """begin() refuses like start() (ValueError, ContextOverflow) and while another prompt is prefilled, leaving
    the batch as it was; max_tokens 0 ends at once; with one slot the prefill waits for it, then runs."""
    model, pool = model_pool
    batch = _core.ContinuousBatch(model._core, n_ctx=64, n_slots=2, pool=pool._core, prefill_chunk=8)
    assert _core.ContinuousBatch(model._core, n_ctx=64, n_slots=1, n_batch=32).prefill_chunk == 32  # default
    with pytest.raises(ValueError, match="prefill_chunk"):
        _core.ContinuousBatch(model._core, n_ctx=64, n_slots=1, prefill_chunk=-1)
    ids = model.tokenize("the cat sat on the mat")
    rid, text, finished, completion, _ = batch.begin(9, ids, max_tokens=0)
    assert rid == 9 and finished and completion["finish_reason"] == "length" and not batch.prefilling
    with pytest.raises(logo_cpp.ContextOverflowError, match="65 tokens but a slot holds 64"):
        batch.begin(1, [5] * 65, **GREEDY)
    with pytest.raises(ValueError, match="empty prompt"):
        batch.begin(1, [], **GREEDY)
    with pytest.raises(ValueError):
        batch.begin(1, ids, pool=pool._core, selection=[(99, 1.0)], **GREEDY)
    assert not batch.prefilling and batch.n_active == 0
    batch.start(1, ids, max_tokens=30, **GREEDY)
    with pytest.raises(ValueError, match="already running"):
        batch.begin(1, ids, **GREEDY)
    assert batch.begin(2, LONG[:30], max_tokens=3, **GREEDY) is None
    with pytest.raises(ValueError, match="being prefilled"):
        batch.begin(3, ids, **GREEDY)
    with pytest.raises(ValueError, match="no free slot"):
        batch.start(3, ids, **GREEDY)  # the prefill holds the second slot
    done = {}
    while batch.n_active or batch.prefilling:
        collect(batch.step(), {}, done)
    assert done[2]["tokens"] == model.generate(LONG[:30], max_tokens=3, **GREEDY).tokens

    single = _core.ContinuousBatch(model._core, n_ctx=64, n_slots=1, prefill_chunk=8)
    single.begin(4, LONG[:30], max_tokens=5, **GREEDY)
    events = []
    while single.n_active or single.prefilling:
        events += single.step()
    assert [e[0] for e in events] == [4] * 5  # 4 chunks: the first 3 steps prefill only, the 4th ends it
    assert events[-1][3]["tokens"] == model.generate(LONG[:30], max_tokens=5, **GREEDY).tokens
