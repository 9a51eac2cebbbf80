"""`logprobs` from the server through the official openai client, in OpenAI's shapes (chat: logprobs + top_logprobs;
completions: logprobs n), streamed and not, against the Python API's log-probabilities for the same prompt and
mixture (Model.generate / Model.chat with logprobs=True)."""

from __future__ import annotations

import numpy as np
import pytest

import logo_cpp

from server_util import client, reference, serve_test_model  # noqa: F401 (reference: a fixture)

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "quick brown fox"}]
MIXTURE = {"sql": 0.5, "poem": 0.5}
# The server decodes in a continuous batch, the Python API in its own session: the same model and mixture, but ggml
# may sum in another order (tests/test_logprobs.py): log-probabilities agree to 1e-3, tokens exactly.
ATOL = 1e-3


@pytest.fixture(scope="module")
def served(model_dir, adapter_dir):
    with serve_test_model(model_dir, adapter_dir, n_slots=4, k=2, warm_up=False) as bg:
        yield bg


def _piece(model, token) -> list[int]:
    return list(model._core.token_piece(token))


def _chat_entries(served, stream, **kw):
    c = client(served)
    if not stream:
        r = c.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].logprobs
    text, content = "", []
    for chunk in c.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                assert choice.logprobs.content, "a chunk with logprobs has entries"
                content += choice.logprobs.content
    return text, (type("L", (), {"content": content}) if content else None)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_equal_the_python_apis(served, reference, stream):
    model, _ = reference
    expected = model.chat(MESSAGES, max_tokens=12, temperature=0.0, adapters=MIXTURE, logprobs=True, top_logprobs=3)
    text, logprobs = _chat_entries(served, stream, model="logo", messages=MESSAGES, max_tokens=12, temperature=0,
                                   logprobs=True, top_logprobs=3, extra_body={"adapters": MIXTURE})
    assert text == expected.text
    content = logprobs.content
    assert len(content) == len(expected.tokens)
    for got, want in zip(content, expected.logprobs):
        assert got.bytes == _piece(model, want.token)
        assert got.token == bytes(got.bytes).decode("utf-8", errors="replace")
        assert got.logprob == pytest.approx(want.logprob, abs=ATOL)
        assert [t.bytes for t in got.top_logprobs] == [_piece(model, t) for t, _ in want.top]
        np.testing.assert_allclose([t.logprob for t in got.top_logprobs], [v for _, v in want.top], atol=ATOL)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_equal_the_python_apis(served, reference, stream):
    model, pool = reference
    prompt = "the cat sat on the mat"
    routing = logo_cpp.LoGo(model, pool, k=2).route(prompt)
    expected = model.generate(prompt, max_tokens=10, temperature=0.0, adapters=routing.as_dict(), logprobs=True,
                              top_logprobs=2)
    c = client(served)
    kw = dict(model="logo", prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    if not stream:
        choice = c.completions.create(**kw).choices[0]
        text, lp = choice.text, choice.logprobs
        tokens, values, tops, offsets = lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset
    else:
        text, tokens, values, tops, offsets = "", [], [], [], []
        for chunk in c.completions.create(stream=True, **kw):
            for choice in chunk.choices:
                text += choice.text
                if choice.logprobs is not None:
                    tokens += choice.logprobs.tokens
                    values += choice.logprobs.token_logprobs
                    tops += choice.logprobs.top_logprobs
                    offsets += choice.logprobs.text_offset
    assert text == expected.text
    texts = [bytes(_piece(model, e.token)).decode("utf-8", errors="replace") for e in expected.logprobs]
    assert tokens == texts
    np.testing.assert_allclose(values, [e.logprob for e in expected.logprobs], atol=ATOL)
    assert offsets == [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    for top, e in zip(tops, expected.logprobs):
        # The 2 most likely tokens and the sampled one (OpenAI: up to logprobs + 1 items), keyed by text.
        want = {bytes(_piece(model, t)).decode("utf-8", errors="replace"): v for t, v in [*e.top, (e.token, e.logprob)]}
        assert top.keys() == want.keys()
        np.testing.assert_allclose([top[k] for k in want], list(want.values()), atol=ATOL)


def test_several_choices_and_no_logprobs_unless_asked(served):
    c = client(served)
    r = c.chat.completions.create(model="base", messages=MESSAGES, max_tokens=4, temperature=0.9, seed=1, n=2,
                                  logprobs=True)
    # One entry per generated token (the end-of-generation token is not listed, nor counted in usage).
    assert sum(len(choice.logprobs.content) for choice in r.choices) == r.usage.completion_tokens
    for choice in r.choices:
        assert choice.logprobs.content and all(e.top_logprobs == [] for e in choice.logprobs.content)
        assert all(e.logprob <= 0 for e in choice.logprobs.content)
    plain = c.chat.completions.create(model="base", messages=MESSAGES, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    assert c.completions.create(model="base", prompt="x", max_tokens=3, temperature=0).choices[0].logprobs is None
    zero = c.completions.create(model="base", prompt="x", max_tokens=3, temperature=0, logprobs=0).choices[0].logprobs
    assert len(zero.tokens) == 3 and all(list(t.keys()) == [tok] for t, tok in zip(zero.top_logprobs, zero.tokens))
