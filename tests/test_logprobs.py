"""Token log-probabilities from the decoder (generate(..., logprobs=True, top_logprobs=n)): against a numpy
log-softmax of the same model's teacher-forced logits (Model.logits over prompt + generated tokens) for single,
batched and continuous-batch generation, with adapters, sampling, stop strings and ignore_eos; against
llama-cpp-python's own logprobs (flash attention, same file) on the real default model; bad arguments named."""

from __future__ import annotations

import numpy as np
import pytest

import logo_cpp
from logo_cpp import _core, default_model

from conftest import REPACK, THREADS

PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols"]


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def check_against_teacher_forcing(model, ids, out, top_n, adapters=None, atol=1e-3):
    """Each TokenLogprob (and the eos entry) equals the log-softmax of the logits Model.logits gives at its
    position; the top alternatives are the n largest of that row, most likely first. The decoder evaluates one
    row per step where teacher forcing evaluates all in one batch: ggml's F32 matmuls then sum in another order
    (up to ~1e-4 apart on the synthetic model), hence atol; a token off by one position is off by far more."""
    lp = log_softmax(model.logits(ids + out.tokens, adapters=adapters))
    assert len(out.logprobs) == len(out.tokens)
    entries = list(out.logprobs) + ([out.eos] if out.eos is not None else [])
    assert (out.eos is not None) == (out.finish_reason == "eos")
    for i, e in enumerate(entries):
        row = lp[len(ids) - 1 + i]
        if i < len(out.tokens):
            assert e.token == out.tokens[i]
        else:
            assert model._core.is_end_of_generation(e.token)
        assert e.logprob == pytest.approx(row[e.token], abs=atol)
        assert len(e.top) == top_n
        if top_n:
            want = np.argsort(-row, kind="stable")[:top_n]
            got = [t for t, _ in e.top]
            # Near-ties may order differently between the decoder's and the teacher-forced logits.
            np.testing.assert_allclose([v for _, v in e.top], row[want], atol=atol)
            np.testing.assert_allclose([v for _, v in e.top], row[got], atol=atol)
            assert all(a >= b for (_, a), (_, b) in zip(e.top, e.top[1:]))


# -- the small synthetic model and its adapters -----------------------------------------------------------
@pytest.fixture(scope="module")
def small(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in ("math", "sql")])
    return model, pool


@pytest.mark.parametrize("top_n", [0, 5])
def test_single_generation_matches_teacher_forced_logits(small, top_n):
    model, _ = small
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        out = model.generate(ids, max_tokens=10, temperature=0, logprobs=True, top_logprobs=top_n)
        check_against_teacher_forcing(model, ids, out, top_n)
        if top_n:  # greedy: the sampled token is the most likely one
            assert all(e.top[0] == (e.token, pytest.approx(e.logprob, abs=1e-6)) for e in out.logprobs)


def test_logprobs_do_not_depend_on_the_sampling_parameters(small):
    """Sampled at temperature 1.7 after top-k / top-p: the reported values are still the raw distribution's."""
    model, _ = small
    ids = model.tokenize(PROMPTS[0])
    out = model.generate(ids, max_tokens=12, temperature=1.7, top_k=20, top_p=0.9, min_p=0.0, seed=3,
                         logprobs=True, top_logprobs=2)
    check_against_teacher_forcing(model, ids, out, 2)


def test_with_an_adapter_mixture_and_ignore_eos(small):
    model, _ = small
    ids = model.tokenize(PROMPTS[1])
    mix = {"math": 0.7, "sql": 0.3}
    # 20 tokens from one prompt over F32 weights: the mixture is folded into the weights (decodes at base speed).
    out = model.generate(ids, max_tokens=20, temperature=0, adapters=mix, ignore_eos=True, logprobs=True,
                         top_logprobs=3)
    assert len(out.tokens) == 20 and out.eos is None
    check_against_teacher_forcing(model, ids, out, 3, adapters=mix)


def test_stop_string_keeps_one_entry_per_token(small):
    model, _ = small
    ids = model.tokenize(PROMPTS[0])
    free = model.generate(ids, max_tokens=12, temperature=0, ignore_eos=True)
    stop = free.text[len(free.text) // 2:][:3]
    assert stop
    out = model.generate(ids, max_tokens=12, temperature=0, ignore_eos=True, stop=stop, logprobs=True)
    assert out.finish_reason == "stop"
    check_against_teacher_forcing(model, ids, out, 0)


def test_batched_generation(small):
    model, _ = small
    outs = model.generate_batch(PROMPTS, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4)
    for prompt, out in zip(PROMPTS, outs):
        check_against_teacher_forcing(model, model.tokenize(prompt), out, 4)


def test_streamed_generation_holds_them_in_its_completion(small):
    model, _ = small
    ids = model.tokenize(PROMPTS[0])
    stream = model.generate(ids, max_tokens=8, temperature=0, stream=True, logprobs=True, top_logprobs=1)
    "".join(stream)
    check_against_teacher_forcing(model, ids, stream.completion, 1)


def test_continuous_batch_events_carry_each_steps_entries(small):
    """The server's path: each event carries the entries of the tokens accepted in it; together they are the
    completion's, and they match the teacher-forced logits of each request's own mixture."""
    model, pool = small
    batch = _core.ContinuousBatch(model._core, n_ctx=128, n_slots=2, pool=pool._core)
    mixes = [{"math": 1.0}, {"sql": 0.5, "math": 0.5}]
    ids = [model.tokenize(p) for p in PROMPTS]
    streamed = {0: [], 1: []}
    done = {}
    events = [batch.start(i, ids[i], max_tokens=6 + i, temperature=0.0, ignore_eos=True, pool=pool._core,
                          selection=[(pool.index(n), w) for n, w in mixes[i].items()], logprobs=True,
                          top_logprobs=2) for i in range(2)]
    while batch.n_active:
        events += batch.step()
    for rid, _, finished, completion, entries in events:
        streamed[rid] += entries
        if finished:
            done[rid] = completion
    for i in range(2):
        out = logo_cpp.model._completion(done[i], logprobs=True)
        assert [logo_cpp.model.token_logprob(t) for t in streamed[i]] == out.logprobs
        check_against_teacher_forcing(model, ids[i], out, 2, adapters=mixes[i])


def test_not_asked_for_means_none(small):
    model, _ = small
    out = model.generate(PROMPTS[0], max_tokens=3, temperature=0)
    assert out.logprobs is None and out.eos is None
    zero = model.generate(PROMPTS[0], max_tokens=0, logprobs=True)
    assert zero.logprobs == [] and zero.eos is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(logprobs=True, top_logprobs=21), "top_logprobs must be an integer in \\[0, 20\\]"),
    (dict(logprobs=True, top_logprobs=-1), "top_logprobs must be an integer"),
    (dict(logprobs=True, top_logprobs=True), "top_logprobs must be an integer"),
    (dict(logprobs=True, top_logprobs=2.0), "top_logprobs must be an integer"),
    (dict(top_logprobs=3), "top_logprobs needs logprobs=True"),
    (dict(logprobs=1), "logprobs must be True or False"),
])
def test_bad_arguments_are_named(small, kwargs, match):
    model, _ = small
    with pytest.raises(ValueError, match=match):
        model.generate(PROMPTS[0], max_tokens=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        model.generate_batch(PROMPTS, max_tokens=2, **kwargs)


def test_the_core_validates_too(small):
    """C++ users get invalid_argument (ValueError here) from GenerateOptions::validate, not an out-of-range read."""
    model, _ = small
    assert logo_cpp.model.MAX_TOP_LOGPROBS == _core.max_top_logprobs == 20
    session = _core.Session(model._core, n_ctx=64, n_seq=1)
    ids = model.tokenize(PROMPTS[0])
    with pytest.raises(ValueError, match="top_logprobs must be in \\[0, 20\\], got 50"):
        session.generate([ids], max_tokens=2, logprobs=True, top_logprobs=50)
    with pytest.raises(ValueError, match="top_logprobs needs logprobs = true"):
        session.generate([ids], max_tokens=2, top_logprobs=2)
    batch = _core.ContinuousBatch(model._core, n_ctx=64, n_slots=1)
    with pytest.raises(ValueError, match="top_logprobs must be in"):
        batch.start(1, ids, max_tokens=2, logprobs=True, top_logprobs=-3)
    assert batch.n_active == 0


# -- the real default model against llama-cpp-python -----------------------------------------------------
real = pytest.mark.skipif(not default_model.has_base_model(), reason="the default model is not installed")


@pytest.fixture(scope="module")
def smollm():
    return logo_cpp.Model(default_model.base_model_path(), n_ctx=512, n_threads=THREADS, repack=REPACK)


@real
@pytest.mark.parametrize("prompt", ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
                                    "The capital of France is"], ids=["chat", "plain"])
def test_real_model_matches_llama_cpp_python_logprobs(smollm, llama_cpp_oracle, prompt):
    """llama-cpp-python's create_completion(logprobs=n) reports the log-softmax of its raw logits (float32) for
    each generated token and its n most likely alternatives: the same quantities, and its logits equal ours bit
    for bit on this model with flash attention, so the values agree to float32 rounding."""
    llm = llama_cpp_oracle(default_model.base_model_path()).llm
    ids = smollm.tokenize(prompt, parse_special=True)
    llm.reset()
    theirs = llm.create_completion(ids, max_tokens=16, temperature=0, logprobs=4)["choices"][0]["logprobs"]
    ours = smollm.generate(ids, max_tokens=16, temperature=0, logprobs=True, top_logprobs=4)
    n = len(ours.tokens)
    assert [smollm.detokenize([t]) for t in ours.tokens] == theirs["tokens"][:n]
    np.testing.assert_allclose([e.logprob for e in ours.logprobs], theirs["token_logprobs"][:n], atol=1e-5)
    for e, top in zip(ours.logprobs, theirs["top_logprobs"]):
        pieces = [smollm.detokenize([t]) for t, _ in e.top]
        if len(set(pieces)) < len(pieces):
            continue  # llama-cpp-python keys its alternatives by text: two tokens of one text collapse
        for piece, (_, value) in zip(pieces, e.top):
            assert top[piece] == pytest.approx(value, abs=1e-5)
    check_against_teacher_forcing(smollm, ids, ours, 4, atol=1e-5)
