"""Adapters handed to the C++ pool from memory (AdapterPool.add_tensors): the same result and the same
checks as the same tensors read from a GGUF file."""

import numpy as np
import pytest

import logo_cpp
from logo_cpp import synthetic

from conftest import SPECS, THREADS

PROMPT = "Hello world, the cat sat on the mat"


def _matrices(tensors, scale, dtype="f32"):
    """add_tensors' matrix tuples from synthetic.adapter_tensors' {weight.lora_a: A (r, n_in), ...}."""
    out = []
    for name in tensors:
        if name.endswith(".lora_a"):
            weight = name[: -len(".lora_a")]
            a, b = tensors[name], tensors[weight + ".lora_b"]
            out.append((weight, np.ascontiguousarray(a), np.ascontiguousarray(b), scale, dtype, "", ""))
    return out


@pytest.fixture()
def llama(model_dir):
    return logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=128, n_threads=THREADS)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_memory_equals_file(llama, tmp_path, dtype):
    spec = synthetic.ModelSpec(**SPECS["llama"])
    targets = ("attn_q", "attn_k", "ffn_down")
    tensors = synthetic.adapter_tensors(spec, targets, rank=4, seed=5)
    # The file stores the values rounded to dtype; memory gets those same values and keeps them in dtype.
    path = synthetic.write_adapter(tmp_path / "a.gguf", spec, targets=targets, alpha=12.0, dtype=dtype, tensors=tensors)
    pool = logo_cpp.AdapterPool(llama, [path])
    pool._core.add_tensors([("mem", "memory", 12.0, _matrices(tensors, 12.0 / 4, dtype))])
    ids = llama.tokenize(PROMPT)
    from_file, from_memory = llama.logits(ids, adapters={"a": 1.0}), llama.logits(ids, adapters={"mem": 1.0})
    assert np.abs(from_file - llama.logits(ids)).max() > 0.1
    np.testing.assert_array_equal(from_memory, from_file)
    info = pool.info("mem")
    assert info["path"] == "memory" and info["alpha"] == 12.0 and len(info["matrices"]) == spec.n_layer * len(targets)
    assert {m["type_a"] for m in info["matrices"]} == {dtype} and {m["scale"] for m in info["matrices"]} == {3.0}
    assert pool.info("mem")["bytes"] == pool.info("a")["bytes"]


def test_per_matrix_scale(llama):
    # Scale 2 on a matrix is the same as B doubled at scale 1.
    spec = synthetic.ModelSpec(**SPECS["llama"])
    tensors = synthetic.adapter_tensors(spec, ("attn_v",), rank=4, seed=6)
    doubled = {k: (2 * v if k.endswith("lora_b") else v) for k, v in tensors.items()}
    pool = logo_cpp.AdapterPool(llama)
    pool._core.add_tensors([("s2", "", 0.0, _matrices(tensors, 2.0)), ("b2", "", 0.0, _matrices(doubled, 1.0))])
    ids = llama.tokenize(PROMPT)
    np.testing.assert_allclose(llama.logits(ids, adapters={"s2": 1.0}), llama.logits(ids, adapters={"b2": 1.0}),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,error,message", [
    (lambda m: [(m[0][0], m[0][1][:, :-8].copy(), *m[0][2:])], logo_cpp.FormatError,
     r"adapter 'src': 'blk.0.attn_q.weight' .* has shape \[120, 4\] .*expected lora_a \[128, r\]"),
    (lambda m: [("blk.0.attn_norm.weight", *m[0][1:])], logo_cpp.FormatError, "is not a linear map this runtime adapts"),
    (lambda m: [("blk.9.attn_q.weight", *m[0][1:])], logo_cpp.FormatError, "which the base model .* does not have"),
    (lambda m: [m[0], m[0]], logo_cpp.FormatError, "'blk.0.attn_q.weight' is adapted twice"),
    (lambda m: [(*m[0][:3], float("nan"), *m[0][4:])], logo_cpp.FormatError, "non-finite scale"),
    (lambda m: [(*m[0][:4], "q4_0", *m[0][5:])], ValueError, "asks for type 'q4_0'"),
    (lambda m: [(m[0][0], m[0][1], m[0][2] * 1e6, *m[0][3:5], "A", "Bname")], logo_cpp.FormatError,
     "tensor 'Bname' contains NaN or Inf"),  # B overflows F16
    (lambda m: [(m[0][0], m[0][1], m[0][2][:, :2].copy(), *m[0][3:])], ValueError, "A of 4 rows but B of 2 columns"),
    (lambda m: [], logo_cpp.FormatError, "has no LoRA matrices"),
])
def test_bad_memory_adapters_leave_the_pool_unchanged(llama, change, error, message):
    spec = synthetic.ModelSpec(**SPECS["llama"])
    good = _matrices(synthetic.adapter_tensors(spec, ("attn_q",), rank=4, seed=7), 1.0)
    bad = change(_matrices(synthetic.adapter_tensors(spec, ("attn_q",), rank=4, seed=8), 1.0, "f16"))
    pool = logo_cpp.AdapterPool(llama)
    pool._core.add_tensors([("first", "", 0.0, good)])
    with pytest.raises(error, match=message):
        pool._core.add_tensors([("ok", "", 0.0, good), ("bad", "src", 0.0, bad)])
    assert pool.names == ["first"]
    with pytest.raises(ValueError, match="duplicate adapter name 'first'"):
        pool._core.add_tensors([("first", "", 0.0, good)])
    with pytest.raises(ValueError, match="needs a name"):
        pool._core.add_tensors([("", "x", 0.0, good)])
    assert pool.names == ["first"]
