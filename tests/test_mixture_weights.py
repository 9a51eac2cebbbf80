"""LoGo's mixture weights (RouterOptions weighting / LoGo(weights=, temperature=)): softmax(z / T) of the selected
adapters' calibrated signals against a numpy reference computed from the routing's own signals; the paper's
weights (s_i / sum s) unchanged bit for bit; unscored adapters never selected; bad arguments named."""

import json
import subprocess
import sys

import numpy as np
import pytest

import logo_cpp
from logo_cpp import _core
from logo_cpp.evaluation.methods import top_k
from logo_cpp.router import DEFAULT_TEMPERATURE

from conftest import THREADS

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols", "the quick brown fox " * 4]


@pytest.fixture(scope="module")
def setup(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in NAMES])
    return model, pool


def softmax_reference(z: np.ndarray, temperature: float) -> np.ndarray:
    """w_i = exp(z_i / T) / sum_j exp(z_j / T) in float64 (max subtracted: the same value), as float32."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp((z - z.max()) / float(np.float32(temperature)))
    return (e / e.sum()).astype(np.float32)


def top_k_reference(signals: np.ndarray, k: int) -> list[int]:
    """The k highest non-NaN signals, ties to the lower pool index."""
    finite = ~np.isnan(signals)
    return [int(i) for i in np.argsort(-np.where(finite, signals, -np.inf), kind="stable") if finite[i]][:k]


@pytest.mark.parametrize("calibration", ["zscore_sq", "zscore", "spectral", "frobenius", "none"])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_softmax_weights_match_numpy(setup, calibration, temperature, k):
    model, pool = setup
    router = logo_cpp.LoGo(model, pool, k=k, calibration=calibration, weights="softmax", temperature=temperature)
    for prompt in PROMPTS:
        r = router.route(prompt)
        assert (r.weighting, r.temperature) == ("softmax", temperature)
        assert r.indices == top_k_reference(r.signals, k)
        expected = softmax_reference(r.signals[r.indices], temperature)
        np.testing.assert_allclose(r.weights, expected, rtol=1e-6, atol=1e-12)
        assert r.weights.dtype == np.float32 and r.weights.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.all(np.diff(r.weights) <= 0)  # ranked by z, and softmax keeps the order
        # logo-cpp eval's numpy selection gives the router's own mixture
        ev = top_k(r.signals, k, weighting="softmax", temperature=temperature)
        assert [i for i, _ in ev] == r.indices
        np.testing.assert_allclose([w for _, w in ev], r.weights, rtol=1e-6)


def test_default_weights_follow_the_calibration(setup):
    """Calibrated (the default): softmax at DEFAULT_TEMPERATURE, the C++ RouterOptions' own default; "none":
    the paper's weights, s_i / sum s over the selection, bit for bit as before the option existed."""
    model, pool = setup
    assert DEFAULT_TEMPERATURE == _core.default_mixture_temperature > 0
    r = logo_cpp.LoGo(model, pool, k=3).route(PROMPTS[0])
    assert (r.calibration, r.weighting, r.temperature) == ("zscore_sq", "softmax", DEFAULT_TEMPERATURE)
    np.testing.assert_allclose(r.weights, softmax_reference(r.signals[r.indices], DEFAULT_TEMPERATURE), rtol=1e-6)
    for signal in ("norm", "entropy"):
        paper = logo_cpp.LoGo(model, pool, k=3, signal=signal, calibration="none")
        explicit = logo_cpp.LoGo(model, pool, k=3, signal=signal, calibration="none", weights="signal")
        for prompt in PROMPTS:
            a, b = paper.route(prompt), explicit.route(prompt)
            assert (a.weighting, a.temperature) == ("signal", None)
            s = a.raw_signals[a.indices].astype(np.float64)
            np.testing.assert_array_equal(a.weights, (s / s.sum()).astype(np.float32))
            np.testing.assert_array_equal(a.weights, b.weights)
            assert a.indices == b.indices == top_k_reference(a.signals, 3)


def test_signal_weights_on_a_calibrated_router_are_the_raw_proportions(setup):
    """weights="signal" with calibration: ranked by the calibrated signal, weighted by the raw one (the router's
    behaviour before softmax weights existed)."""
    model, pool = setup
    for prompt in PROMPTS:
        r = logo_cpp.LoGo(model, pool, k=3, weights="signal").route(prompt)
        assert r.weighting == "signal" and r.temperature is None and r.calibration == "zscore_sq"
        assert r.indices == top_k_reference(r.signals, 3)
        s = r.raw_signals[r.indices].astype(np.float64)
        np.testing.assert_array_equal(r.weights, (s / s.sum()).astype(np.float32))


def test_temperature_limits(setup):
    """A small T puts (almost) all weight on the top adapter; a large T approaches equal weights."""
    model, pool = setup
    cold = logo_cpp.LoGo(model, pool, k=3, temperature=1e-4).route(PROMPTS[0])
    z = np.sort(cold.signals[~np.isnan(cold.signals)])[::-1]
    if z[0] - z[1] > 1e-2:  # no tie at the top
        assert cold.weights[0] == 1.0 and np.all(cold.weights[1:] == 0)
    hot = logo_cpp.LoGo(model, pool, k=3, temperature=1e6).route(PROMPTS[0])
    np.testing.assert_allclose(hot.weights, 1 / 3, rtol=1e-4)


def test_unscored_adapters_are_never_selected(setup):
    """k above the pool: every scored adapter once, never an unscored one (NaN signal), weights finite and
    summing to 1."""
    model, pool = setup
    for calibration, unscored in (("zscore_sq", "poem"), ("none", "chat")):  # no attn_v / no attn_q LoRA
        for weights in ("softmax", "signal"):
            r = logo_cpp.LoGo(model, pool, k=100, calibration=calibration, weights=weights).route(PROMPTS[1])
            assert r.unscored == [unscored] and unscored not in r.names
            assert len(r.indices) == len(pool) - 1 and not np.isnan(r.signals[r.indices]).any()
            assert np.all(np.isfinite(r.weights)) and r.weights.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0, -0.5, float("nan"), float("inf"), -float("inf"), 1e-60, 1e300, "0.5",
                                         True, None.__class__])
def test_bad_temperature_is_a_value_error_naming_it(setup, temperature):
    model, pool = setup
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        logo_cpp.LoGo(model, pool, temperature=temperature)


def test_bad_weights_and_misplaced_temperature(setup):
    model, pool = setup
    with pytest.raises(ValueError, match="unknown weights 'raw'; use one of signal, softmax"):
        logo_cpp.LoGo(model, pool, weights="raw")
    with pytest.raises(ValueError, match="temperature applies to weights='softmax' only"):
        logo_cpp.LoGo(model, pool, weights="signal", temperature=0.5)
    with pytest.raises(ValueError, match="temperature applies to weights='softmax' only"):
        logo_cpp.LoGo(model, pool, calibration="none", temperature=0.5)  # "none" weights by the signal


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_the_core_refuses_a_bad_temperature(setup, temperature):
    """C++ callers get the same check (RouterOptions validation), as an exception naming the field."""
    model, pool = setup
    ids = model.tokenize(PROMPTS[0])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        _core.route(model._session, 0, pool._core, ids, k=3, layers=[-1], weighting="softmax", temperature=temperature)
    with pytest.raises(ValueError, match="unknown weighting 'raw'"):
        _core.route(model._session, 0, pool._core, ids, k=3, layers=[-1], weighting="raw")


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_route_all_shows_the_weights(model_dir, adapter_dir, tmp_path):
    model = model_dir / "llama-f32.gguf"
    out = cli("route", "-m", model, "-a", adapter_dir, "-p", "Hello world", "--k", "3", "--all", "--json",
              "--mixture-temperature", "0.25", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["weighting"], data["temperature"]) == ("softmax", 0.25)
    z = np.array([data["signals"][s["name"]] for s in data["selected"]])
    np.testing.assert_allclose([s["weight"] for s in data["selected"]], softmax_reference(z, 0.25), atol=2e-6)
    text = cli("route", "-m", model, "-a", adapter_dir, "-p", "Hello world", "--k", "3", "--all",
               "--mixture-weights", "signal", "--threads", "1", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "weights proportional to the raw signals (the paper)" in text.stdout
    header = next(line for line in text.stdout.splitlines() if line.strip().startswith("adapter"))
    assert header.split()[-1] == "weight"  # the signal table has a weight column
    bad = cli("route", "-m", model, "-a", adapter_dir, "-p", "x", "--mixture-temperature", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--mixture-temperature: expected a finite number > 0" in bad.stderr
    bad = cli("route", "-m", model, "-a", adapter_dir, "-p", "x", "--mixture-weights", "signal",
              "--mixture-temperature", "0.5", cwd=tmp_path)
    assert bad.returncode != 0 and "temperature applies to weights='softmax' only" in bad.stderr
