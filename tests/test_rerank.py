"""LoGo(rerank_margin=...): the confidence rerank of close top-two k = 1 routings, against a numpy reference that
recomputes it from the public API (route's signals, Model.generate and a log-softmax of Model.logits, teacher
forced, with one adapter at weight 1; the runtime reads the decoder's own log-probabilities); no rerank above the
margin; bad arguments named; the rerank as LoGo's default at k = 1 (session 8: "auto", off at k > 1 and for the paper's
calibration "none", rerank_margin=None / --no-rerank turn it off); the run, route and eval commands."""

import json

import numpy as np
import pytest

import logo_cpp
from logo_cpp import cli
from logo_cpp.rerank import DEFAULT_RERANK_MARGIN, mean_logprob

from conftest import THREADS

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols", "the quick brown fox " * 4]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def setup(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in NAMES])
    return model, pool


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def reference(model, pool, prompt: str, margin: float):
    """(top two names, margin, mean log-probs or None, chosen name, chosen greedy text) from the public API."""
    r = logo_cpp.LoGo(model, pool, k=1).route(prompt)
    s = np.where(np.isnan(r.signals), -np.inf, r.signals)
    top = [int(i) for i in np.argsort(-s, kind="stable")[:2]]
    gap = float(r.signals[top[0]] - r.signals[top[1]])
    names = [pool.names[i] for i in top]
    if not gap < margin:
        text = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, adapters={names[0]: 1.0}).text
        return names, gap, None, names[0], text
    ids = model.tokenize(prompt, add_special=True, parse_special=True)
    scores, texts = [], []
    for name in names:
        out = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, adapters={name: 1.0})
        lp = log_softmax(model.logits(ids + out.tokens, adapters={name: 1.0}))
        values = [lp[len(ids) - 1 + t, a] for t, a in enumerate(out.tokens)]
        if out.finish_reason == "eos":  # greedy ended at the most likely token, an end-of-generation one
            end = lp[len(ids) - 1 + len(out.tokens)]
            assert model._core.is_end_of_generation(int(np.argmax(end)))
            values.append(end.max())
        scores.append(float(np.mean(values)))
        texts.append(out.text)
    pick = 1 if scores[1] > scores[0] else 0
    return names, gap, scores, names[pick], texts[pick]


@pytest.mark.parametrize("margin", [1e6, 1e-6, "default"])
def test_generate_matches_numpy_reference(setup, margin):
    model, pool = setup
    if margin == "default":  # LoGo(k=1) as constructed by default reranks under DEFAULT_RERANK_MARGIN
        router, margin = logo_cpp.LoGo(model, pool, k=1), DEFAULT_RERANK_MARGIN
    else:
        router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=margin)
    for prompt in PROMPTS:
        names, gap, scores, chosen, text = reference(model, pool, prompt, margin)
        out = router.generate(prompt, max_tokens=MAX_TOKENS, temperature=0)
        info = out.routing.rerank
        assert info["candidates"] == names
        assert info["margin"] == pytest.approx(gap, abs=1e-6)
        assert info["reranked"] == (scores is not None)
        if scores is None:
            assert info["mean_logprobs"] is None
        else:
            # The decoder's logits and the teacher-forced ones sum in another order (test_logprobs.py): 1e-3.
            np.testing.assert_allclose(info["mean_logprobs"], scores, rtol=0, atol=1e-3)
            assert "rerank_seconds" in out.routing.timings
        if scores is None or abs(scores[1] - scores[0]) > 2e-3:
            assert info["chosen"] == chosen and out.routing.names == [chosen]
            assert out.text == text
        assert out.routing.weights.tolist() == [1.0]
        assert out.routing.indices == [pool.index(out.routing.names[0])]


def test_the_rerank_can_change_the_adapter(setup):
    """On these synthetic adapters some prompt keeps the second adapter (else the test above checks only one side)."""
    model, pool = setup
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e6)
    prompts = PROMPTS + ["a b c d e f g", "1 2 3 4 5 6 7 8", "The end.", "zzz yyy xxx"]
    chosen = [router.generate(p, max_tokens=MAX_TOKENS, temperature=0).routing.rerank for p in prompts]
    assert any(c["chosen"] != c["candidates"][0] for c in chosen)
    assert any(c["chosen"] == c["candidates"][0] for c in chosen)


def test_generate_batch_equals_generate(setup):
    model, pool = setup
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e6)
    batch = router.generate_batch(PROMPTS, max_tokens=MAX_TOKENS, temperature=0)
    for prompt, out in zip(PROMPTS, batch):
        one = router.generate(prompt, max_tokens=MAX_TOKENS, temperature=0)
        a, b = out.routing.rerank, one.routing.rerank
        assert out.routing.names == one.routing.names and a["candidates"] == b["candidates"]
        np.testing.assert_allclose(a["mean_logprobs"], b["mean_logprobs"], rtol=1e-6)
        assert out.text == one.text


def test_sampled_generation_uses_the_reranked_adapter(setup):
    model, pool = setup
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e6)
    out = router.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0.7, seed=3)
    expected = model.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0.7, seed=3,
                              adapters={out.routing.rerank["chosen"]: 1.0})
    assert out.text == expected.text
    stream = router.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, stream=True)
    assert "".join(stream) == router.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0).text


def test_logprobs_through_the_rerank(setup):
    """A greedy reranked answer is the kept candidate's own generation: its logprobs (when asked) are the
    decoder's, and they are not left on it when not asked for."""
    model, pool = setup
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e6)
    out = router.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2)
    plain = model.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2,
                           adapters={out.routing.rerank["chosen"]: 1.0})
    assert out.tokens == plain.tokens and len(out.logprobs) == len(out.tokens)
    np.testing.assert_allclose([e.logprob for e in out.logprobs], [e.logprob for e in plain.logprobs], atol=1e-4)
    assert all(len(e.top) == 2 for e in out.logprobs)
    pick = out.routing.rerank["candidates"].index(out.routing.rerank["chosen"])
    assert out.routing.rerank["mean_logprobs"][pick] == pytest.approx(mean_logprob(out), abs=1e-6)
    assert router.generate(PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0).logprobs is None
    batch = router.generate_batch(PROMPTS[:2], max_tokens=MAX_TOKENS, temperature=0, logprobs=True)
    assert all(len(b.logprobs) == len(b.tokens) for b in batch)


def test_route_alone_never_reranks(setup):
    model, pool = setup
    plain = logo_cpp.LoGo(model, pool, k=1).route(PROMPTS[0])
    r = logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e6).route(PROMPTS[0])
    assert r.names == plain.names and r.rerank is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.5", "Auto", [0.5]])
def test_bad_margin_named(setup, bad):
    model, pool = setup
    with pytest.raises(ValueError, match=r"rerank_margin must be a finite number > 0, None \(off\) or 'auto'"):
        logo_cpp.LoGo(model, pool, k=1, rerank_margin=bad)


def test_the_default_reranks_at_k1_with_calibrated_signals_only(setup):
    model, pool = setup
    assert logo_cpp.LoGo(model, pool, k=1).rerank_margin == DEFAULT_RERANK_MARGIN
    assert logo_cpp.LoGo(model, pool, k=1, rerank_margin="auto").rerank_margin == DEFAULT_RERANK_MARGIN
    assert logo_cpp.LoGo(model, pool, k=1, rerank_margin=0.25).rerank_margin == 0.25
    assert logo_cpp.LoGo(model, pool, k=1, rerank_margin=None).rerank_margin is None
    assert logo_cpp.LoGo(model, pool, k=2).rerank_margin is None  # mixtures are not reranked
    assert logo_cpp.LoGo(model, pool).rerank_margin is None       # LoGo's default k (20)
    assert logo_cpp.LoGo(model, pool, k=1, calibration="none").rerank_margin is None  # the paper, as it is
    assert logo_cpp.TopOne(model, pool).rerank_margin is None     # the probe's top adapter, by definition
    router = logo_cpp.LoGo(model, pool, k=1)  # "auto" follows k when it is set later (chat's /k)
    router.k = 3
    assert router.rerank_margin is None and router.route(PROMPTS[0]).names == logo_cpp.LoGo(model, pool, k=3).route(
        PROMPTS[0]).names
    router.k = 1
    assert router.rerank_margin == DEFAULT_RERANK_MARGIN
    fixed = logo_cpp.LoGo(model, pool, k=1, rerank_margin=0.5)
    with pytest.raises(ValueError, match="rerank_margin applies to k = 1 only"):
        fixed.k = 2


def test_off_and_paper_routers_generate_the_plain_routing(setup):
    """rerank_margin=None and calibration "none" (the paper) generate exactly the routed adapter's answer, with no
    rerank record: what every k = 1 generation was before the rerank became the default."""
    model, pool = setup
    for router in (logo_cpp.LoGo(model, pool, k=1, rerank_margin=None), logo_cpp.LoGo(model, pool, k=1,
                                                                                         calibration="none")):
        for prompt in PROMPTS:
            out = router.generate(prompt, max_tokens=MAX_TOKENS, temperature=0)
            plain = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0,
                                   adapters=router.route(prompt).as_dict())
            assert out.text == plain.text and out.routing.rerank is None
        assert all(b.routing.rerank is None for b in router.generate_batch(PROMPTS, max_tokens=MAX_TOKENS,
                                                                           temperature=0))


def test_rerank_needs_k1_and_calibration(setup):
    model, pool = setup
    with pytest.raises(ValueError, match="k = 1"):
        logo_cpp.LoGo(model, pool, k=2, rerank_margin=0.5)
    with pytest.raises(ValueError, match="calibrated"):
        logo_cpp.LoGo(model, pool, k=1, calibration="none", rerank_margin=0.5)


def test_run_flag():
    parser = cli.build_parser()
    assert parser.parse_args(["run", "-p", "x", "--rerank"]).rerank == DEFAULT_RERANK_MARGIN
    assert parser.parse_args(["run", "-p", "x", "--rerank", "0.25"]).rerank == 0.25
    assert parser.parse_args(["run", "-p", "x"]).rerank == "auto"  # LoGo's default: on at k = 1, calibrated
    assert parser.parse_args(["run", "-p", "x", "--no-rerank"]).rerank is None
    for bad in (["--rerank", "0"], ["--rerank", "--no-rerank"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "-p", "x", *bad])


def _cli_json(capsys, *args):
    assert cli.main([*map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_and_route_commands_default_to_the_rerank(setup, model_dir, adapter_dir, capsys):
    """`run` (k = 1 by default) reranks as LoGo(k=1).generate does, `--no-rerank` generates the probe's top
    adapter's answer; `route` generates nothing and says what generation will do, with the top two's margin."""
    model, pool = setup
    files = ["-m", model_dir / "llama-f32.gguf", "-a", *[adapter_dir / f"{n}.gguf" for n in NAMES]]
    common = [*files, "-n", MAX_TOKENS, "--threads", THREADS, "--json"]
    for prompt in PROMPTS:
        names, gap, scores, chosen, text = reference(model, pool, prompt, DEFAULT_RERANK_MARGIN)
        ran = _cli_json(capsys, "run", *common, "-p", prompt)
        info = ran["routing"]["rerank"]
        assert info["candidates"] == names and info["margin"] == pytest.approx(gap, abs=1e-6)
        assert info["reranked"] == (scores is not None)
        if scores is None or abs(scores[1] - scores[0]) > 2e-3:
            assert ran["routing"]["selected"] == [{"name": chosen, "weight": 1.0}] and ran["text"] == text
        off = _cli_json(capsys, "run", *common, "-p", prompt, "--no-rerank")
        assert "rerank" not in off["routing"] and off["routing"]["selected"][0]["name"] == names[0]
        assert off["text"] == model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, adapters={names[0]: 1.0}).text
        routed = _cli_json(capsys, "route", *files, "-p", prompt, "--json")
        later = routed["rerank_at_generation"]
        assert later["candidates"] == names and later["margin"] == pytest.approx(gap, abs=1e-6)
        assert later["would_rerank"] == (gap < DEFAULT_RERANK_MARGIN) and later["margin_limit"] == DEFAULT_RERANK_MARGIN
        assert routed["selected"] == [{"name": names[0], "weight": 1.0}]  # route itself never reranks
        assert "rerank_at_generation" not in _cli_json(capsys, "route", *files, "-p", prompt, "--json",
                                                       "--calibration", "none")
    assert cli.main(["route", *map(str, files), "-p", PROMPTS[0]]) == 0
    assert "rerank (happens at generation, not here): top two " in capsys.readouterr().out


@pytest.mark.parametrize("margin", [1e6, 1e-6])
def test_eval_rerank_row_matches_numpy_reference(setup, margin):
    """`logo-cpp eval`'s "k=1 + rerank" row (evaluation/run.py rerank_outcome) answers each in-pool prompt as the
    numpy reference's chosen adapter (margin 1e6: every prompt reranked) or as the k = 1 row (1e-6: none)."""
    from logo_cpp.evaluation.methods import RouterEntry, logo_source
    from logo_cpp.evaluation.run import Item, run_comparison
    from logo_cpp.router import DEFAULT_TEMPERATURE

    model, pool = setup
    entry = RouterEntry("LoGo-norm zscore_sq", source="logo", signal="logo-norm-zscore_sq", weighting="softmax",
                        temperature=DEFAULT_TEMPERATURE, calibrated=True, rerank_margin=margin)
    plain, reranked = entry.methods([1])
    assert reranked.name == f"LoGo-norm zscore_sq k=1 + rerank {margin:g} (default)" and reranked.rerank_margin == margin
    items = [Item(index=i, task=NAMES[0], prompt=p, answer="", own=0, max_tokens=MAX_TOKENS)
             for i, p in enumerate(PROMPTS)]
    run = run_comparison(model, pool, items, [logo_source(model, pool)], [plain, reranked],
                         lambda task, text, answer: 0.0, batch=4)
    k1 = {it.index: o for it, o in run.outcomes[("in pool", plain.name)]}
    for item, outcome in run.outcomes[("in pool", reranked.name)]:
        names, gap, scores, chosen, text = reference(model, pool, item.prompt, margin)
        if scores is None:
            assert outcome.text == k1[item.index].text and outcome.selection == k1[item.index].selection
        elif abs(scores[1] - scores[0]) > 2e-3:
            assert outcome.selection == [(pool.index(chosen), 1.0)] and outcome.text == text
    with pytest.raises(ValueError, match="a rerank applies to top-k at k = 1"):
        type(plain)("x", "top-k", signal="s", k=3, rerank_margin=0.5)


def test_run_rerank_needs_logo_k1(model_dir, adapter_dir, capsys):
    args = ["run", "-m", str(model_dir / "llama-f32.gguf"), "-a", str(adapter_dir / "math.gguf"),
            str(adapter_dir / "sql.gguf"), "-p", "hello", "--rerank", "--k", "2", "--threads", str(THREADS)]
    assert cli.main(args) != 0
    assert "--rerank applies to --router logo with --k 1" in capsys.readouterr().err
