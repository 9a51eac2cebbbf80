"""Calibrated LoGo signals and the Arrow router against an independent numpy reference (adapters read with
`gguf`, hidden states from the numpy forward pass); determinism and independence from the pool's order."""

import numpy as np
import pytest

import logo_cpp
from logo_cpp import synthetic

from conftest import SPECS, THREADS
from reference import ReferenceAdapter, ReferenceModel, calibrated_signals, lora_spectrum, probe_vector

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols"]


@pytest.fixture(scope="module")
def setup(model_dir, adapter_dir, tmp_path_factory):
    path = model_dir / "llama-f32.gguf"
    model = logo_cpp.Model(path, n_ctx=256, n_threads=THREADS)
    # One more adapter that adapts attn_q of block 1 only: multi-block signals average over what exists.
    partial = synthetic.write_adapter(tmp_path_factory.mktemp("partial") / "partial.gguf",
                                      synthetic.ModelSpec(**SPECS["llama"]), targets=("attn_q",), layers=[1], seed=21)
    paths = [adapter_dir / f"{n}.gguf" for n in NAMES] + [partial]
    pool = logo_cpp.AdapterPool(model, paths)
    reference = ReferenceModel(str(path))
    adapters = [ReferenceAdapter(str(p)) for p in paths]
    # The generic prompts' probe vectors at every block and both positions, from the numpy forward pass.
    generic_h = {"last": {}, "mean": {}}
    first = 1 if model.tokenize("x")[0] == model.bos else 0
    for layer in range(reference.n_layer):
        hs = [reference.block_input(model.tokenize(p, add_special=True, parse_special=True), layer)
              for p in logo_cpp.calibration_prompts()]
        generic_h["last"][layer] = np.stack([h[-1] for h in hs])
        w = reference.w[f"blk.{layer}.attn_norm.weight"]
        generic_h["mean"][layer] = np.stack([reference._rms(h[first:], w).mean(axis=0) for h in hs])
    return model, pool, reference, adapters, generic_h


def test_calibration_prompts_are_generic_and_many():
    prompts = logo_cpp.calibration_prompts()
    assert len(prompts) >= 100 and len(set(prompts)) == len(prompts)
    assert not any(p.endswith("\nAnswer:") for p in prompts)  # not the shipped pool's task template


def test_hidden_states_equal_block_inputs_and_the_reference(setup):
    model, _, reference, _, _ = setup
    ids = model.tokenize(PROMPTS[0])
    hs = model.hidden_states(ids)
    assert hs.shape == (model.n_layer, len(ids), model.n_embd) and hs.dtype == np.float32
    for layer in range(model.n_layer):
        ref = reference.block_input(ids, layer)
        np.testing.assert_allclose(hs[layer], ref, atol=5e-3 * np.abs(ref).max())
        np.testing.assert_array_equal(hs[layer, -1], model._session.block_input(0, ids, layer)[0])
    np.testing.assert_array_equal(model.hidden_states(ids, [-1, 0])[0], hs[-1])
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        model.hidden_states(ids, [3])


CASES = [(c, s, l, p) for c in ("none", "zscore", "zscore_sq", "spectral", "frobenius") for s in ("norm", "entropy", "arrow")
         for l in ([-1], [1], [0, 1, 2]) for p in ("last", "mean")
         # every calibration and signal at both positions on the last block; the rest on the default position
         if l == [-1] or p == ("last" if c == "none" else "mean")]


@pytest.mark.parametrize("calibration,signal,layers,position", CASES)
def test_calibrated_signals_match_reference(setup, calibration, signal, layers, position):
    model, pool, reference, adapters, generic_h = setup
    blocks = sorted(l % model.n_layer for l in layers)
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        probe_h = {l: probe_vector(reference, ids, l, position, model.bos) for l in blocks}
        raw, calibrated = calibrated_signals(adapters, probe_h, generic_h[position], blocks, signal=signal,
                                             calibration=calibration)
        if signal == "arrow":
            router = logo_cpp.Arrow(model, pool, k=3, layer=layers, calibration=calibration, position=position)
        else:
            router = logo_cpp.LoGo(model, pool, k=3, signal=signal, layer=layers, module="attn_q",
                                   calibration=calibration, position=position)
        r = router.route(prompt)
        assert r.calibration == calibration and r.signal == signal and r.layers == blocks and r.position == position
        scored = ~np.isnan(raw)
        assert list(~np.isnan(r.signals)) == list(scored)
        # F16 KV cache and F32 accumulation against float64: ~1e-3 relative on the signals; a z-score
        # magnifies absolute errors by 1/std, so it is compared in units of the generic spread.
        # Arrow's small cosines get an absolute tolerance on the scale of the largest.
        np.testing.assert_allclose(r.raw_signals[scored], raw[scored], rtol=5e-3, atol=2e-3 * raw[scored].max())
        if calibration in ("zscore", "zscore_sq"):
            np.testing.assert_allclose(r.signals[scored], calibrated[scored], atol=0.05)
        else:
            np.testing.assert_allclose(r.signals[scored], calibrated[scored], rtol=5e-3,
                                       atol=2e-3 * np.abs(calibrated[scored]).max())
        if calibration == "none":
            np.testing.assert_array_equal(r.signals, r.raw_signals)
        # Ranked by the calibrated signal (where the reference's cut is not a near tie); weighted by the raw one
        # (the paper's rule: calibration "none" and Arrow) or by softmax(z / T) of the calibrated one (the
        # default for a calibrated LoGo; tests/test_mixture_weights.py checks those weights in detail).
        order = [i for i in np.argsort(-np.where(scored, calibrated, -np.inf), kind="stable") if scored[i]][:3]
        ranked = np.sort(calibrated[scored])[::-1]
        tie = 0.1 if calibration in ("zscore", "zscore_sq") else 1e-2 * np.abs(ranked).max()
        if np.all(-np.diff(ranked[:4]) > tie):
            assert r.indices == order
        if signal == "arrow" or calibration == "none":
            assert r.weighting == "signal"
            np.testing.assert_allclose(r.weights, r.raw_signals[r.indices] / r.raw_signals[r.indices].sum(), rtol=1e-5)
        else:
            assert (r.weighting, r.temperature) == ("softmax", logo_cpp.router.DEFAULT_TEMPERATURE)
            z = r.signals[r.indices].astype(np.float64)
            e = np.exp((z - z.max()) / r.temperature)
            np.testing.assert_allclose(r.weights, e / e.sum(), rtol=1e-5)


@pytest.mark.parametrize("signal", ["norm", "entropy"])
def test_default_router_matches_reference(setup, signal):
    """LoGo's defaults (zscore_sq, token mean, attn_v of every block of this model) against the reference:
    the adapter without attn_v ("poem") and the attn_q-only one are unscored."""
    model, pool, reference, adapters, generic_h = setup
    blocks = list(range(model.n_layer))
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        probe_h = {l: probe_vector(reference, ids, l, "mean", model.bos, module="attn_v") for l in blocks}
        raw, calibrated = calibrated_signals(adapters, probe_h, generic_h["mean"], blocks, module="attn_v",
                                             signal=signal, calibration="zscore_sq")
        r = logo_cpp.LoGo(model, pool, k=3, signal=signal).route(prompt)
        scored = ~np.isnan(raw)
        assert r.unscored == ["poem", "partial"] and list(~np.isnan(r.signals)) == list(scored)
        np.testing.assert_allclose(r.raw_signals[scored], raw[scored], rtol=5e-3, atol=2e-3 * raw[scored].max())
        np.testing.assert_allclose(r.signals[scored], calibrated[scored], atol=0.05)
        ranked = np.sort(calibrated[scored])[::-1]
        if np.all(-np.diff(ranked[:4]) > 0.1):
            assert r.indices == [i for i in np.argsort(-np.where(scored, calibrated, -np.inf), kind="stable")][:3]


def test_norm_factor_probe_equals_the_full_probe(setup):
    """A calibrated norm router scores ||R_i A_i h|| (s B_i = Q_i R_i) in one matmul per block; the uncalibrated
    router computes o_i = s B_i A_i h itself: the norms agree to float rounding, at every block and rank
    (the pool mixes ranks 2..16 and an F16, a BF16 and a Q8_0 adapter)."""
    model, pool, *_ = setup
    for prompt in PROMPTS:
        fast = logo_cpp.LoGo(model, pool, k=3, calibration="zscore_sq").route(prompt)
        full = logo_cpp.LoGo(model, pool, k=3, calibration="none", layer=fast.layers, module="attn_v",
                             position="mean").route(prompt)
        np.testing.assert_allclose(fast.raw_signals, full.raw_signals, rtol=1e-5, equal_nan=True)
        assert np.all(np.isnan(fast.entropies))  # norms only: no entropy is computed


def test_none_is_the_papers_signal_bit_for_bit(setup):
    """calibration="none" routes exactly as the uncalibrated router always did: the probe vector at the last
    token, the signal is the norm (or 1/(H + 1e-6)) itself, weights are s_i / sum s over the selection."""
    model, pool, *_ = setup
    for signal in ("norm", "entropy"):
        router = logo_cpp.LoGo(model, pool, k=3, signal=signal, calibration="none")
        assert router.position == "last"
        r = router.route(PROMPTS[0])
        assert r.position == "last"
        expected = r.norms if signal == "norm" else (1.0 / (r.entropies.astype(np.float64) + 1e-6)).astype(np.float32)
        np.testing.assert_array_equal(r.signals, expected)
        s = r.signals[r.indices].astype(np.float64)
        np.testing.assert_array_equal(r.weights, (s / s.sum()).astype(np.float32))


def test_defaults_follow_the_calibration(setup):
    """The default router: zscore_sq at the token mean of attn_v over the last 8 blocks (every block of this
    3-block model); calibration "none" alone gives the paper's probe site (last block, attn_q, last token)."""
    model, pool, *_ = setup
    assert logo_cpp.router.DEFAULT_CALIBRATION == "zscore_sq"
    r = logo_cpp.LoGo(model, pool, k=3).route(PROMPTS[0])
    assert (r.calibration, r.position, r.module) == ("zscore_sq", "mean", "attn_v")
    assert r.layers == list(range(model.n_layer)) and r.layer == model.n_layer - 1
    paper = logo_cpp.LoGo(model, pool, k=3, calibration="none").route(PROMPTS[0])
    assert (paper.position, paper.module, paper.layers) == ("last", "attn_q", [model.n_layer - 1])
    assert logo_cpp.router.default_layers("zscore_sq", 30) == list(range(-8, 0))
    assert logo_cpp.router.default_layers("none", 30) == [-1]


def test_spectral_and_frobenius_use_the_exact_norms(setup):
    """The core's data-free norms of s B A (from r x r Grams) against numpy's SVD of the full product."""
    model, pool, _, adapters, _ = setup
    for calibration, col in (("spectral", 1), ("frobenius", 0)):
        r = logo_cpp.LoGo(model, pool, k=1, layer=-1, module="attn_q", calibration=calibration).route(PROMPTS[0])
        assert r.position == "mean"
        norms = np.array([lora_spectrum(ad.pairs["blk.2.attn_q.weight"])[col] if "blk.2.attn_q.weight" in ad.pairs
                          else np.nan for ad in adapters])
        scored = ~np.isnan(norms)
        np.testing.assert_allclose(r.signals[scored], r.raw_signals[scored] / norms[scored], rtol=1e-5)


@pytest.mark.parametrize("calibration", ["zscore", "zscore_sq"])
def test_statistics_are_deterministic_and_independent_of_pool_order(model_dir, adapter_dir, calibration):
    paths = [adapter_dir / f"{n}.gguf" for n in NAMES]
    results = {}
    for label, order in (("forward", paths), ("reversed", paths[::-1])):
        model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
        pool = logo_cpp.AdapterPool(model)
        for p in order:  # one at a time: statistics never see the rest of the pool
            pool.add(p)
        r = logo_cpp.LoGo(model, pool, k=3, calibration=calibration).route(PROMPTS[0])
        results[label] = {n: s for n, s in zip(pool.names, r.signals)}
    for name in NAMES:
        np.testing.assert_array_equal(results["forward"][name], results["reversed"][name])


def test_readding_an_adapter_reuses_its_statistics(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in NAMES])
    router = logo_cpp.LoGo(model, pool, k=3, layer=-1, calibration="zscore")
    first = router.route(PROMPTS[0])
    assert first.timings["calibration_seconds"] > 0
    pool.remove("math")
    pool.add(adapter_dir / "math.gguf")  # back, now last in the pool
    again = router.route(PROMPTS[0])
    # One cached statistic per scored adapter matrix (one block, one signal): re-adding computed nothing new.
    assert model._core.calibration_cache_entries == int(np.sum(~np.isnan(first.signals)))
    a = dict(zip(["math", "sql", "poem", "code", "chat", "legal", "mixed"], first.signals))
    b = dict(zip(pool.names, again.signals))
    for name in NAMES:
        np.testing.assert_array_equal(a[name], b[name])


def test_calibration_on_a_context_too_short_for_the_generic_prompts(model_dir, adapter_dir):
    """The generic prompts run in a private session: a 16-token context still gets calibrated signals."""
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=16, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "math.gguf", adapter_dir / "sql.gguf"])
    r = logo_cpp.LoGo(model, pool, k=1, calibration="zscore").route("Hi there")
    assert np.all(np.isfinite(r.signals))


def test_arrow_router(setup):
    model, pool, reference, adapters, generic_h = setup
    r = logo_cpp.Arrow(model, pool).route(PROMPTS[0])
    assert r.method == "arrow" and r.signal == "arrow" and r.calibration == "none"
    assert r.layers == list(range(model.n_layer)) and len(r.names) == 1 and list(r.weights) == [1.0]
    assert np.all(np.isnan(r.norms))
    assert logo_cpp.ROUTERS["arrow"] is logo_cpp.Arrow


@pytest.mark.parametrize("kwargs,message", [
    (dict(calibration="zcore"), "unknown calibration 'zcore'; use one of none, zscore, zscore_sq, spectral, frobenius"),
    (dict(module="attn_x"), "unknown or unprobeable module 'attn_x'; use one of attn_q, attn_k, attn_v"),
    (dict(calibration=None), "unknown calibration None"),
    (dict(signal="arrow"), "unknown signal 'arrow'; use one of norm, entropy"),
    (dict(layer=[]), "layer is an empty sequence"),
    (dict(layer=[0, 5]), "layer 5 is out of range"),
    (dict(layer="last"), "layer 'l' is out of range|layer must be an int"),
    (dict(layer=1.0), "layer must be an int or a sequence of ints"),
    (dict(position="first"), "unknown position 'first'; use one of last, mean"),
])
def test_bad_calibration_arguments(setup, kwargs, message):
    model, pool, *_ = setup
    with pytest.raises(ValueError, match=message):
        logo_cpp.LoGo(model, pool, **kwargs)


def test_bad_arrow_arguments(setup):
    model, pool, *_ = setup
    with pytest.raises(ValueError, match="unknown calibration 'x'"):
        logo_cpp.Arrow(model, pool, calibration="x")
    with pytest.raises(ValueError, match="k must be"):
        logo_cpp.Arrow(model, pool, k=0)


def test_mean_position_over_several_chunks(model_dir, adapter_dir):
    """A prompt longer than n_batch is probed chunk by chunk: its token mean is the same as in one chunk."""
    paths = [adapter_dir / f"{n}.gguf" for n in NAMES]
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    out = {}
    for n_batch in (512, 5):
        model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS, n_batch=n_batch)
        pool = logo_cpp.AdapterPool(model, paths)
        assert len(model.tokenize(prompt)) > 3 * 5
        out[n_batch] = logo_cpp.LoGo(model, pool, k=3, calibration="spectral", position="mean").route(prompt)
    np.testing.assert_allclose(out[5].raw_signals, out[512].raw_signals, rtol=1e-4)
    assert out[5].indices == out[512].indices


def test_mean_position_reads_the_ffn_norm_for_ffn_modules(setup):
    model, pool, reference, adapters, generic_h = setup
    ids = model.tokenize(PROMPTS[0])
    r = logo_cpp.LoGo(model, pool, k=1, layer=-1, module="ffn_up", calibration="spectral", position="mean").route(PROMPTS[0])
    h = {2: probe_vector(reference, ids, 2, "mean", model.bos, module="ffn_up")}
    raw, calibrated = calibrated_signals(adapters, h, generic_h["mean"], [2], module="ffn_up", calibration="spectral")
    scored = ~np.isnan(raw)
    assert [pool.names[i] for i in np.flatnonzero(scored)] == ["poem", "chat"]
    np.testing.assert_allclose(r.raw_signals[scored], raw[scored], rtol=5e-3)
    np.testing.assert_allclose(r.signals[scored], calibrated[scored], rtol=5e-3)
