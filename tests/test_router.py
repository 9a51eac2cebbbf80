"""LoGo routing against the independent numpy reference, plus the plain routers and bad arguments."""

import numpy as np
import pytest

import logo_cpp

from conftest import THREADS
from reference import ReferenceAdapter, ReferenceModel, logo_signals, select

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols", "the quick brown fox " * 4]


@pytest.fixture(scope="module")
def setup(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    paths = [adapter_dir / f"{n}.gguf" for n in NAMES]
    pool = logo_cpp.AdapterPool(model, paths)
    reference = ReferenceModel(str(model_dir / "llama-f32.gguf"))
    adapters = [ReferenceAdapter(str(p)) for p in paths]
    return model, pool, reference, adapters


@pytest.mark.parametrize("probe", ["base", "all"])
@pytest.mark.parametrize("signal", ["norm", "entropy"])
@pytest.mark.parametrize("layer", [-1, 1])
def test_signals_selection_and_weights_match_reference(setup, probe, signal, layer):
    model, pool, reference, adapters = setup
    k = 3
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        routing = logo_cpp.LoGo(model, pool, k=k, signal=signal, probe=probe, layer=layer, calibration="none").route(prompt)
        h, norms, entropies, scored = logo_signals(reference, adapters, ids, layer=layer, probe=probe)
        if probe == "base":  # the probe vector itself
            ours_h = model._session.block_input(0, ids, layer % model.n_layer)[0]
            np.testing.assert_allclose(ours_h, h, atol=5e-3 * np.abs(h).max())
        # F16 KV cache and F32 accumulation: signals agree to ~1e-3 relative.
        assert list(~np.isnan(routing.signals)) == list(scored)
        np.testing.assert_allclose(routing.norms[scored], norms[scored], rtol=5e-3)
        np.testing.assert_allclose(routing.entropies[scored], entropies[scored], rtol=5e-3, atol=1e-4)
        signals = norms if signal == "norm" else 1.0 / (entropies + 1e-6)
        order, weights = select(signals, scored, k)
        ranked = np.sort(signals[scored])[::-1]
        if ranked[k - 1] - ranked[k] > 1e-2 * ranked[0]:  # the cut is not a near tie
            assert routing.indices == list(order)
            np.testing.assert_allclose(routing.weights, weights, rtol=1e-2)
        assert routing.weights.sum() == pytest.approx(1.0, abs=1e-5)
        assert routing.unscored == ["chat"]  # no attn_q LoRA: never selectable
        assert "chat" not in routing.names
        ranking = routing.ranking()  # every pool adapter once: the selection first, unscored last
        assert sorted(ranking) == list(range(len(pool))) and ranking[:k] == routing.indices
        assert pool.names[ranking[-1]] == "chat"


def test_routing_is_deterministic_and_independent_of_history(setup):
    model, pool, _, _ = setup
    router = logo_cpp.LoGo(model, pool, k=3)
    first = router.route(PROMPTS[0])
    router.generate(PROMPTS[1], max_tokens=8, temperature=0.0)
    again = router.route(PROMPTS[0])
    assert first.indices == again.indices
    np.testing.assert_array_equal(first.signals, again.signals)


def test_k_is_capped_and_k_equal_n_with_uniform_signal_weights(setup):
    model, pool, _, _ = setup
    routing = logo_cpp.LoGo(model, pool, k=100).route(PROMPTS[0])
    assert len(routing.names) == len(pool) - 1  # every scored adapter
    uniform = logo_cpp.Uniform(model, pool).route(PROMPTS[0])
    assert uniform.names == pool.names
    np.testing.assert_allclose(uniform.weights, 1.0 / len(pool))


def test_all_adapters_at_equal_weight_equal_the_uniform_router(setup):
    model, pool, _, _ = setup
    fixed = logo_cpp.Fixed(model, pool, {n: 1.0 for n in pool.names})
    a = fixed.generate(PROMPTS[0], max_tokens=12, temperature=0.0, ignore_eos=True)
    b = logo_cpp.Uniform(model, pool).generate(PROMPTS[0], max_tokens=12, temperature=0.0, ignore_eos=True)
    assert a.tokens == b.tokens


def test_generate_uses_the_routed_mixture(setup):
    model, pool, _, _ = setup
    router = logo_cpp.LoGo(model, pool, k=2)
    out = router.generate(PROMPTS[0], max_tokens=12, temperature=0.0, ignore_eos=True)
    assert out.routing.names == router.route(PROMPTS[0]).names
    manual = model.generate(PROMPTS[0], max_tokens=12, temperature=0.0, ignore_eos=True, adapters=out.routing.as_dict())
    assert out.tokens == manual.tokens


def test_generate_batch_routes_each_instance_on_its_own(setup):
    model, pool, _, _ = setup
    router = logo_cpp.LoGo(model, pool, k=3, signal="entropy")
    outs = router.generate_batch(PROMPTS, max_tokens=10, temperature=0.0, ignore_eos=True)
    for prompt, out in zip(PROMPTS, outs):
        alone = router.generate(prompt, max_tokens=10, temperature=0.0, ignore_eos=True)
        assert out.routing.names == alone.routing.names
        assert out.tokens == alone.tokens


def test_top1_random_and_fixed(setup):
    model, pool, _, _ = setup
    top = logo_cpp.TopOne(model, pool).route(PROMPTS[0])
    assert top.names == logo_cpp.LoGo(model, pool, k=1).route(PROMPTS[0]).names and list(top.weights) == [1.0]
    r1 = logo_cpp.RandomK(model, pool, k=3, seed=5)
    r2 = logo_cpp.RandomK(model, pool, k=3, seed=5)
    assert [r1.route("a").names for _ in range(3)] == [r2.route("a").names for _ in range(3)]
    fixed = logo_cpp.Fixed(model, pool, {"math": 3.0, "sql": 1.0}).route("anything")
    assert fixed.names == ["math", "sql"] and list(fixed.weights) == [0.75, 0.25]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(k=0), ValueError, "k must be"),
    (dict(signal="cosine"), ValueError, "unknown signal 'cosine'"),
    (dict(probe="some"), ValueError, "unknown probe 'some'"),
    (dict(module="attn_z"), ValueError, "module 'attn_z'"),
    (dict(module="ffn_down"), ValueError, "module 'ffn_down'"),
    (dict(layer=3), ValueError, "layer 3 is out of range"),
    (dict(layer=-4), ValueError, "layer -4 is out of range"),
])
def test_bad_router_arguments(setup, kwargs, error, message):
    model, pool, _, _ = setup
    with pytest.raises(error, match=message):
        logo_cpp.LoGo(model, pool, **kwargs)


def test_empty_pool_and_unadapted_module(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)
    empty = logo_cpp.AdapterPool(model)
    with pytest.raises(ValueError, match="pool is empty"):
        logo_cpp.LoGo(model, empty).route("Hi")
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "chat.gguf"])
    with pytest.raises(ValueError, match=r"no adapter in the pool adapts blk\.2\.attn_q"):
        logo_cpp.LoGo(model, pool, calibration="none").route("Hi")  # the paper's site: block 2's attn_q
    with pytest.raises(ValueError, match=r"no adapter in the pool adapts blk\.0\.attn_q, blk\.1\.attn_q, blk\.2\.attn_q"):
        logo_cpp.LoGo(model, pool, module="attn_q").route("Hi")
    assert logo_cpp.LoGo(model, pool).route("Hi").names == ["chat"]  # the default probes attn_v
    # A pool without attn_v (poem: attn_q and FFN only): the default falls back to attn_q; a named module does not.
    q_only = logo_cpp.AdapterPool(model, [adapter_dir / "poem.gguf"])
    r = logo_cpp.LoGo(model, q_only).route("Hi")
    assert r.names == ["poem"] and r.module == "attn_q" and r.layers == [0, 1, 2]
    with pytest.raises(ValueError, match=r"no adapter in the pool adapts blk\.0\.attn_v, blk\.1\.attn_v, blk\.2\.attn_v, so"):
        logo_cpp.LoGo(model, q_only, module="attn_v").route("Hi")
