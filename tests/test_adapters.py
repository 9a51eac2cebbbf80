"""Adapters: loading and validation, and mixture logits against llama.cpp's own adapter code."""

import numpy as np
import pytest

import logo_cpp
from logo_cpp import synthetic

from conftest import SPECS, THREADS

PROMPT = "Hello world, the cat sat on the mat and the dog"
ALL = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]


def make(model_dir, adapter_dir, name="llama-f32.gguf", adapters=ALL):
    model = logo_cpp.Model(model_dir / name, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{a}.gguf" for a in adapters])
    return model, pool


# F32 base: our mixture is F32, so only summation order differs from llama.cpp's separate adapter matmuls.
# F16/quantized bases: the mixture is stored F16 (half the bytes per decode step), adding ~1e-3 relative.
@pytest.mark.parametrize("name,tolerance", [("llama-f32.gguf", 2e-3), ("llama-f16.gguf", 1e-2), ("llama-q8_0.gguf", 2e-2)])
@pytest.mark.parametrize("mixture", [
    {"math": 1.0},
    {"math": 0.5, "sql": 0.3, "poem": 0.2},
    {"code": 0.6, "chat": 0.25, "legal": 0.1, "mixed": 0.05},
])
def test_mixture_logits_match_llama_cpp(model_dir, adapter_dir, llama_cpp_oracle, name, tolerance, mixture):
    model, pool = make(model_dir, adapter_dir, name)
    ids = model.tokenize(PROMPT)
    ours = model.logits(ids, adapters=mixture)
    oracle = llama_cpp_oracle(model_dir / name)
    oracle.set_adapters(mixture, adapter_dir)
    theirs = oracle.logits(ids)
    oracle.set_adapters({}, adapter_dir)
    base = model.logits(ids)
    scale = np.abs(theirs).max()
    effect, error = np.abs(theirs - base).max(), np.abs(ours - theirs).max()
    assert effect > 0.1 * scale  # the adapters really change the output
    assert error <= tolerance * scale and error < effect / 10


def test_fixed_mixture_generation_matches_llama_cpp(model_dir, adapter_dir, llama_cpp_oracle):
    model, pool = make(model_dir, adapter_dir)
    mixture = {"math": 0.7, "sql": 0.3}
    ids = model.tokenize(PROMPT)
    oracle = llama_cpp_oracle(model_dir / "llama-f32.gguf")
    oracle.set_adapters(mixture, adapter_dir)
    theirs = oracle.greedy(ids, 24)
    oracle.set_adapters({}, adapter_dir)
    ours = model.generate(ids, max_tokens=24, temperature=0.0, ignore_eos=True, adapters=mixture)
    assert ours.tokens == theirs


def test_batch_with_different_mixtures_equals_each_alone(model_dir, adapter_dir):
    model, pool = make(model_dir, adapter_dir)
    router = logo_cpp.Fixed(model, pool, {"math": 1.0})
    prompts = ["Hello world", "the cat sat on the mat", "Numbers 12345", "the dog"]
    mixtures = [{"math": 1.0}, {"sql": 0.5, "poem": 0.5}, {"code": 0.2, "chat": 0.3, "legal": 0.5}, {"mixed": 1.0}]
    selections = [[(pool.index(n), w) for n, w in m.items()] for m in mixtures]
    ids = [model.tokenize(p) for p in prompts]
    outs = model._session_for(4).generate(ids, max_tokens=16, temperature=0.0, ignore_eos=True,
                                          pool=pool._core, selections=selections)
    for prompt, mixture, out in zip(prompts, mixtures, outs):
        alone = model.generate(prompt, max_tokens=16, temperature=0.0, ignore_eos=True, adapters=mixture)
        assert list(out["tokens"]) == alone.tokens
    assert router.route("x").names == ["math"]


def test_pool_names_add_remove_and_directory(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    assert pool.names == sorted(ALL) and len(pool) == len(ALL)
    pool.remove("sql")
    assert "sql" not in pool and len(pool) == len(ALL) - 1
    assert pool.add(adapter_dir / "sql.gguf", name="sql2") == ["sql2"]
    info = pool.info("mixed")
    ranks = {m["module"]: m["rank"] for m in info["matrices"]}
    assert ranks == {"attn_q": 8, "attn_v": 2}
    assert {m["type_a"] for m in info["matrices"]} == {"bf16"}
    assert info["alpha"] == 8.0 and info["matrices"][0]["scale"] in (1.0, 4.0)
    code = pool.info("code")
    assert code["alpha"] == 0.0 and all(m["scale"] == 1.0 for m in code["matrices"])
    with pytest.raises(KeyError, match="nope"):
        pool.remove("nope") if False else pool.index("nope")
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        pool.remove("nope")


@pytest.mark.parametrize("kind,message", [
    ("adapter_wrong_arch", "is for architecture 'qwen2' but the base model"),
    ("adapter_wrong_shape", r"lora_a has shape \[\d+, \d+\] and lora_b \[\d+, \d+\]; .*expected lora_a"),
    ("adapter_missing_b", r"has no matching '.*\.lora_b'"),
    ("adapter_nan", "contains NaN or Inf"),
    ("adapter_inf", "contains NaN or Inf"),
    ("adapter_not_adapter", "is not a LoRA adapter: general.type"),
    ("adapter_alpha_nan", r"key 'adapter\.lora\.alpha' is nan; expected a finite number"),
    ("adapter_alpha_inf", r"key 'adapter\.lora\.alpha' is inf; expected a finite number"),
    ("adapter_truncated", r"is truncated: tensor 'blk\.\d+\.attn_[qv]\.weight\.lora_[ab]' needs bytes up to \d+ but "
                          r"the file has \d+"),
    ("adapter_version_99", r"is GGUF version 99; logo-cpp reads GGUF versions 2 and 3"),
])
def test_bad_adapters_leave_the_pool_unchanged(model_dir, adapter_dir, broken_dir, kind, message):
    model, pool = make(model_dir, adapter_dir, adapters=["math", "sql"])
    bad = broken_dir / f"{kind}.gguf"
    with pytest.raises(logo_cpp.FormatError, match=message) as info:
        pool.add([adapter_dir / "poem.gguf", bad])
    assert str(bad) in str(info.value)
    assert pool.names == ["math", "sql"]
    assert model.logits(model.tokenize("Hi"), adapters={"math": 1.0}).shape[0] == 2


def test_adapter_for_a_tensor_the_model_lacks(model_dir, tmp_path):
    # qwen3's head size gives attn_q another shape than llama's: an adapter for it does not fit llama.
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)
    path = tmp_path / "qwen3.gguf"
    synthetic.write_adapter(path, synthetic.ModelSpec(**SPECS["qwen3"]), arch="llama", targets=("attn_q",))
    with pytest.raises(logo_cpp.FormatError, match=r"blk\.0\.attn_q\.weight"):
        logo_cpp.AdapterPool(model, [path])


def test_duplicate_names_and_missing_files(model_dir, adapter_dir, tmp_path):
    model, pool = make(model_dir, adapter_dir, adapters=["math"])
    with pytest.raises(ValueError, match="duplicate adapter name 'math'"):
        pool.add(adapter_dir / "math.gguf")
    with pytest.raises(FileNotFoundError):
        pool.add(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="no .gguf"):
        pool.add(tmp_path)
    assert pool.names == ["math"]


def test_unknown_adapter_in_a_fixed_mixture(model_dir, adapter_dir):
    model, pool = make(model_dir, adapter_dir, adapters=["math"])
    with pytest.raises(KeyError, match="nope"):
        model.generate("Hi", adapters={"nope": 1.0})
    with pytest.raises(ValueError, match="finite"):
        model.generate("Hi", adapters={"math": float("inf")})


def test_memory_is_proportional_to_adapter_size(model_dir, adapter_dir):
    model, pool = make(model_dir, adapter_dir, adapters=["math"])
    one = pool.nbytes
    for i in range(20):
        pool.add(adapter_dir / "math.gguf", name=f"copy{i}")
    assert pool.nbytes == 21 * one


@pytest.mark.parametrize("name", ["llama-f16.gguf", "llama-q8_0.gguf"])
def test_batched_mixtures_over_a_compact_base_match_each_alone(model_dir, adapter_dir, name):
    # Over F16/quantized bases the per-sequence stacks of a batch are stored Q8_0 (half the bytes of
    # F16 per decode step); the rounding stays far below the adapters' effect.
    model, pool = make(model_dir, adapter_dir, name)
    prompts = [model.tokenize(p) for p in ("Hello world", "the cat sat on the mat", "Numbers 12345")]
    mixtures = [[(pool.index("math"), 1.0)], [(pool.index("poem"), 0.5), (pool.index("sql"), 0.5)],
                [(pool.index("code"), 0.7), (pool.index("legal"), 0.3)]]
    session = logo_cpp._core.Session(model._core, n_ctx=256, n_seq=3)
    firsts = [session.evaluate(i, 1, p, pool=pool._core, selections=mixtures)[0] for i, p in enumerate(prompts)]
    step = session.evaluate(0, 3, [7, 7, 7], pool=pool._core, selections=mixtures)
    for i, p in enumerate(prompts):
        names = {pool.names[j]: w for j, w in mixtures[i]}
        alone = model.logits(p + [7], adapters=names)
        base = model.logits(p + [7])
        scale = np.abs(alone).max()
        error = max(np.abs(firsts[i] - alone[-2]).max(), np.abs(step[i] - alone[-1]).max())
        assert error <= 2e-2 * scale
        assert error < np.abs(alone - base).max() / 10
