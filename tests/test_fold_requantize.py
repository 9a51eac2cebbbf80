"""fold="requantize" / "upcast": a fixed mixture folded into requantized / Q8_0 copies of the adapted weights
(logo::FoldMode).

W' = quantize_T(dequantize(W) + sum_i w_i s_i B_i A_i), T the weight's ggml type. Oracles:
- the folded weights against an independent numpy reference built from the same GGUF files with the `gguf`
  package: bit for bit on Q4_0, Q4_1 and Q8_0, whose quantizers gguf-py implements as ggml's reference does.
  To make the reference exact, the adapters hold dyadic values (small integers / 16): every product and sum of
  the delta is exact in float32 whatever the summation order, so ggml and numpy add the same delta to the same
  dequantized W. Two documented exceptions: ggml's x86 Q8_0 quantizer (the CPU's from_float, used by ggml_cpy)
  multiplies by 127 / amax where the reference multiplies by 1 / (amax / 127) and rounds half to even where
  the reference rounds half away from zero, so a value within float32 rounding of a half step may land one
  level apart (the block scales agree bit for bit); gguf-py cannot quantize Q4_K, so there the folded weights
  must lie within one 4-bit step of their 32-element sub-block's range of the exact sum (the quantizer's own
  bound: half a step, plus its 6-bit scale and min rounding);
- the logits of a model computing with the fold against llama.cpp (flash attention) running the base GGUF file
  whose adapted tensors were overwritten with the folded bytes: bit for bit (same weights, same kernels), on
  Q4_1, Q4_K and Q8_0 bases; and with the CPU's repacked layouts, against our own base path on that file;
- over F16 weights the fold is what the exact mode already does for long generations: greedy tokens equal;
  over F32 weights the fold only reorders float32 sums: logits agree to float32 rounding.
fold="requantize-stochastic" re-rounds Q4_0/Q4_1/Q8_0 quants on the reference's block grid: checked against
the reference's scales (bit for bit), the two grid neighbours of each exact value, its unbiasedness on small
changes (the fraction of an adapter's change it keeps, where nearest rounding keeps little), determinism, and the
same llama.cpp-on-the-merged-file oracle.
fold="upcast" writes every quantized adapted weight as Q8_0 of the same exact sum: checked against gguf-py's Q8_0
reference (as above), against llama.cpp on the base file with those Q8_0 tensors written in (bit for bit), from
repacked weights, over F16 weights (the exact fold), on IQ2_XXS (no quantizer of its own: upcast still folds it),
and for what it keeps of a small change. How far the folds move a model from the exact mixture is measured
(docs/mixtures-on-quantized-bases.md sections 11-12), not asserted beyond the checks that the adapters' effect
survives on Q8_0 and under upcast.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

import logo_cpp
from logo_cpp import synthetic

from conftest import REPACK, SPECS, THREADS, LlamaCpp

PROMPT = "Hello world, the cat sat on the mat and the dog jumps over the lazy fox"
SPEC = synthetic.ModelSpec(**SPECS["llama256"])  # 256-wide rows: real K-quant blocks


def dyadic_adapter(path, seed: int, targets=("attn_q", "attn_v"), rank: int = 8):
    """An adapter whose A and B hold integers in [-8, 8] / 16 (exact in F32 and F16), alpha = 2 * rank."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, array in synthetic.adapter_tensors(SPEC, targets, rank, seed).items():
        tensors[name] = (rng.integers(-8, 9, size=array.shape) / 16.0).astype(np.float32)
    return synthetic.write_adapter(path, SPEC, targets=targets, rank=rank, alpha=2.0 * rank, dtype="f16",
                                   seed=seed, tensors=tensors)


@pytest.fixture(scope="module")
def files(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fold_requantize")
    bases = {"f32": model_dir / "llama256-f32.gguf", "q4_k": model_dir / "llama256-q4_k.gguf",
             "q4_0": model_dir / "llama256-q4_0.gguf"}
    for t in ("q4_1", "q8_0", "f16"):
        bases[t] = synthetic.quantize(bases["f32"], root / f"llama256-{t}.gguf", t)
    adapters = {
        "d0": dyadic_adapter(root / "d0.gguf", 70),
        "d1": dyadic_adapter(root / "d1.gguf", 71, targets=("attn_q", "attn_k", "ffn_up", "ffn_down"), rank=4),
    }
    for i in range(3):
        adapters[f"r{i}"] = synthetic.write_adapter(root / f"r{i}.gguf", SPEC, rank=8, alpha=16.0, dtype="f16",
                                                    seed=80 + i)
    return root, bases, adapters


def load(path, adapters: dict, repack: bool = REPACK):
    model = logo_cpp.Model(str(path), n_ctx=256, n_threads=THREADS, repack=repack)
    pool = logo_cpp.AdapterPool(model, [str(p) for p in adapters.values()])
    return model, pool


def gguf_tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(str(path)).tensors}


def reference_delta(adapter_paths: dict, mixture: dict[str, float], name: str, shape) -> np.ndarray:
    """sum_i w_i (alpha_i / r_i) B_i A_i for weight `name`, numpy float64 of shape (n_out, n_in)."""
    delta = np.zeros(shape)
    for adapter, weight in mixture.items():
        reader = GGUFReader(str(adapter_paths[adapter]))
        tensors = {t.name: t for t in reader.tensors}
        if name + ".lora_a" not in tensors:
            continue
        a, b = (quants.dequantize(tensors[name + s].data, tensors[name + s].tensor_type).astype(np.float64)
                for s in (".lora_a", ".lora_b"))
        alpha = float(reader.fields["adapter.lora.alpha"].parts[-1][0])
        delta += weight * (alpha / a.shape[0]) * (b @ a)
    return delta


def as_blocks(data: bytes, stored) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(stored.data.shape)


MIXTURE = {"d0": 0.5, "d1": 1.0}


@pytest.mark.parametrize("base", ["q4_0", "q4_1", "q8_0", "q4_k"])
def test_folded_weights_match_gguf_reference(files, base):
    _, bases, adapters = files
    model, _pool = load(bases[base], adapters)
    folded = model.folded_weights(MIXTURE)
    stored = gguf_tensors(bases[base])
    expected_names = {f"blk.{i}.{m}.weight" for i in range(SPEC.n_layer)
                      for m in ("attn_q", "attn_v", "attn_k", "ffn_up", "ffn_down")}
    assert set(folded) == expected_names
    checked_types = set()
    for name, (type_name, data) in folded.items():
        t = stored[name]
        assert type_name.lower() == t.tensor_type.name.lower() and len(data) == t.data.nbytes, name
        w = quants.dequantize(t.data, t.tensor_type)
        delta = reference_delta(adapters, MIXTURE, name, w.shape)
        assert np.abs(delta).max() > 0.5, name  # the delta dwarfs a quantization step: a lost delta fails
        exact = w + delta.astype(np.float32)  # float32, as ggml adds (the delta is exact)
        got = quants.dequantize(as_blocks(data, t), t.tensor_type)
        checked_types.add(t.tensor_type)
        if t.tensor_type in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1):
            assert data == quants.quantize(exact, t.tensor_type).tobytes(), name
        elif t.tensor_type == GGMLQuantizationType.Q8_0:
            ref = quants.quantize(exact, t.tensor_type).reshape(-1, 34)
            ours = as_blocks(data, t).reshape(-1, 34)
            assert np.array_equal(ours[:, :2], ref[:, :2]), name  # block scales bit for bit
            q_ours, q_ref = ours[:, 2:].view(np.int8).astype(int), ref[:, 2:].view(np.int8).astype(int)
            amax = np.abs(exact.reshape(-1, 32)).max(axis=1, keepdims=True)  # the quantizers scale by it unrounded
            scaled = exact.reshape(-1, 32) * (127.0 / np.where(amax == 0, 1, amax))
            near_tie = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-4
            differ = q_ours != q_ref
            assert np.all(np.abs(q_ours - q_ref) <= 1) and np.all(near_tie[differ]), name
        elif t.tensor_type in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K, GGMLQuantizationType.Q5_0):
            sub = exact.reshape(-1, 32)
            step = (sub.max(axis=1) - np.minimum(sub.min(axis=1), 0)) / 15.0
            assert np.all(np.abs(got - exact).reshape(-1, 32) <= step[:, None] + 1e-6), name
        else:
            pytest.fail(f"{name}: unexpected type {t.tensor_type.name}")
    if base == "q4_k":
        assert GGMLQuantizationType.Q4_K in checked_types


def merged_file(base_path, folded: dict, out):
    """The base GGUF with each folded tensor's bytes written over the original's (same type and size)."""
    shutil.copyfile(base_path, out)
    stored = gguf_tensors(base_path)
    with open(out, "r+b") as f:
        for name, (_type, data) in folded.items():
            assert len(data) == stored[name].n_bytes
            f.seek(stored[name].data_offset)
            f.write(data)
    return out


# The one-scale formats stochastic rounding handles: (bytes per block, bytes of scales, levels, offset).
STOCHASTIC_FORMATS = {GGMLQuantizationType.Q4_0: (18, 2, 16, 8), GGMLQuantizationType.Q4_1: (20, 4, 16, 0),
                      GGMLQuantizationType.Q8_0: (34, 2, 255, 127)}


def unpack_quants(blocks: np.ndarray, tensor_type) -> np.ndarray:
    """The integer quants of Q4_0/Q4_1 (0..15) or Q8_0 (shifted to 0..254), one row of 32 per block."""
    size, scales, _levels, offset = STOCHASTIC_FORMATS[tensor_type]
    blocks = blocks.reshape(-1, size)
    if tensor_type == GGMLQuantizationType.Q8_0:
        return blocks[:, scales:].view(np.int8).astype(int) + offset
    qs = blocks[:, scales:].astype(int)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


@pytest.mark.parametrize("base", ["q4_0", "q4_1", "q8_0", "q4_k"])
def test_stochastic_fold_against_the_reference_grid(files, base):
    """requantize-stochastic: the block scales of ggml's reference quantizer (gguf-py's, bit for bit on these
    dyadic inputs), each quant one of the two grid points around the exact value, unbiased over a tensor, the
    same bytes on every call; K-quant weights keep nearest rounding (the requantize fold's bytes)."""
    _, bases, adapters = files
    model, _pool = load(bases[base], adapters)
    stochastic = model.folded_weights(MIXTURE, fold="requantize-stochastic")
    assert model.folded_weights(MIXTURE, fold="requantize-stochastic") == stochastic
    nearest = model.folded_weights(MIXTURE, fold="requantize")
    stored = gguf_tensors(bases[base])
    for name, (_type, data) in stochastic.items():
        t = stored[name]
        if t.tensor_type not in STOCHASTIC_FORMATS:
            if t.tensor_type != GGMLQuantizationType.Q8_0:
                assert data == nearest[name][1], name
            continue
        w = quants.dequantize(t.data, t.tensor_type)
        exact = w + reference_delta(adapters, MIXTURE, name, w.shape).astype(np.float32)
        ref = quants.quantize(exact, t.tensor_type).reshape(-1, STOCHASTIC_FORMATS[t.tensor_type][0])
        ours = np.frombuffer(data, dtype=np.uint8).reshape(ref.shape)
        scales = STOCHASTIC_FORMATS[t.tensor_type][1]
        assert np.array_equal(ours[:, :scales], ref[:, :scales]), name
        d = ours[:, :2].copy().view(np.float16).astype(np.float64)
        m = ours[:, 2:4].copy().view(np.float16).astype(np.float64) if scales == 4 else 0.0
        offset = STOCHASTIC_FORMATS[t.tensor_type][3]
        u = (exact.reshape(-1, 32).astype(np.float64) - m) / np.where(d == 0, 1, d) + offset
        q = unpack_quants(ours, t.tensor_type)
        live = (d != 0)[:, 0]
        top = STOCHASTIC_FORMATS[t.tensor_type][2] - 1  # the block scale's F16 rounding can put u past the range
        lo = np.clip(np.floor(u - 1e-4), 0, top)[live]
        hi = np.clip(np.floor(u + 1e-4) + 1, 0, top)[live]
        assert np.all((q[live] >= lo) & (q[live] <= hi)), name
        err = (quants.dequantize(ours.reshape(t.data.shape), t.tensor_type) - exact).reshape(-1, 32)[live]
        step = np.broadcast_to(d, (d.shape[0], 32))[live]
        assert abs(err.mean()) < 0.05 * np.abs(step).mean(), name  # unbiased (Q4_0 scales are signed)
        assert not np.array_equal(q, unpack_quants(ref, t.tensor_type)), name


@pytest.mark.parametrize("fold", ["requantize", "requantize-stochastic"])
@pytest.mark.parametrize("base", ["q4_1", "q4_k", "q8_0"])
def test_fold_logits_equal_llama_cpp_on_the_merged_file(files, tmp_path, base, fold):
    _, bases, adapters = files
    mixture = {"r0": 0.5, "r1": 0.3, "r2": 0.2}
    model, _pool = load(bases[base], adapters)
    ids = model.tokenize(PROMPT)
    merged = merged_file(bases[base], model.folded_weights(mixture, fold=fold), tmp_path / "merged.gguf")
    ours = model.logits(ids, adapters=mixture, fold=fold)
    oracle = LlamaCpp(merged).logits(ids)
    np.testing.assert_array_equal(ours, oracle)
    exact = model.logits(ids, adapters=mixture)
    assert np.abs(ours - exact).max() > 0  # the fold is a different computation
    # Generation folds too: greedy tokens are llama.cpp's on the merged file.
    out = model.generate(PROMPT, max_tokens=6, temperature=0, ignore_eos=True, adapters=mixture, fold=fold)
    assert out.tokens == LlamaCpp(merged).greedy(ids, 6)


@pytest.mark.parametrize("base", ["q4_0", "q4_k"])
@pytest.mark.parametrize("fold", ["requantize", "requantize-stochastic"])
def test_fold_into_repacked_weights(files, tmp_path, base, fold):
    """Weights in the CPU's repacked layout (repack=True: Q4_0 and Q4_K get CPU_REPACK here) are read from the
    file, and their folded copies live in the same repacked buffer type: the same logits as our own base path
    running the merged file with the same layout."""
    _, bases, adapters = files
    mixture = {"r0": 0.6, "d0": 0.4}
    model, _pool = load(bases[base], adapters, repack=True)
    ids = model.tokenize(PROMPT)
    plain_model, _plain_pool = load(bases[base], adapters, repack=False)
    folded = plain_model.folded_weights(mixture, fold=fold)
    assert model.folded_weights(mixture, fold=fold) == folded  # the repacked source gives the same plain bytes
    merged = merged_file(bases[base], folded, tmp_path / "merged.gguf")
    on_merged = logo_cpp.Model(str(merged), n_ctx=256, n_threads=THREADS, repack=True)
    np.testing.assert_array_equal(model.logits(ids, adapters=mixture, fold=fold), on_merged.logits(ids))


def test_fold_over_float_weights_is_the_exact_fold(files):
    _, bases, adapters = files
    mixture = {"r0": 0.7, "r1": 0.3}
    # F16: exact mode folds a generation of >= 16 tokens; requantize folds the same way at any length.
    model, _pool = load(bases["f16"], adapters)
    exact = model.generate(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, adapters=mixture)
    folded = model.generate(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, adapters=mixture, fold="requantize")
    assert folded.tokens == exact.tokens
    short = model.generate(PROMPT, max_tokens=3, temperature=0, ignore_eos=True, adapters=mixture, fold="requantize")
    assert short.tokens == exact.tokens[:3]
    # F32: W + B A folded in float32 vs W x + B (A x): the same sums in another order.
    model, _pool = load(bases["f32"], adapters)
    ids = model.tokenize(PROMPT)
    exact_logits = model.logits(ids, adapters=mixture)
    effect = np.abs(exact_logits - model.logits(ids)).max()
    diff = np.abs(model.logits(ids, adapters=mixture, fold="requantize") - exact_logits).max()
    assert effect > 0.1 and diff <= 1e-4 * max(1.0, np.abs(exact_logits).max())


def test_fold_keeps_the_mixture_effect_on_q8_0(files):
    """On Q8_0 (a step of 1/127 of a block's largest value) most of the mixture's effect survives the fold: the
    folded logits are far closer to the exact mixture's than the base's are. (Q4_1/Q4_K keep far less of a
    small adapter's effect: measured in docs/mixtures-on-quantized-bases.md section 11.)"""
    _, bases, adapters = files
    mixture = {"r0": 0.5, "r1": 0.3, "r2": 0.2}
    model, _pool = load(bases["q8_0"], adapters)
    ids = model.tokenize(PROMPT)
    exact = model.logits(ids, adapters=mixture)
    base = model.logits(ids)
    folded = model.logits(ids, adapters=mixture, fold="requantize")
    assert np.abs(folded - exact).mean() < 0.25 * np.abs(base - exact).mean()


def test_bad_fold_values_and_refusals(files, tmp_path):
    _, bases, adapters = files
    model, pool = load(bases["q4_1"], adapters)
    for bad in ("lossy", "", None, 1, "EXACT"):
        with pytest.raises(ValueError, match="fold must be one of 'exact', 'requantize', 'requantize-stochastic'"):
            model.generate(PROMPT, max_tokens=2, adapters={"r0": 1.0}, fold=bad)
        with pytest.raises(ValueError, match="fold must be one of"):
            model.logits([1, 2], adapters={"r0": 1.0}, fold=bad)
    router = logo_cpp.Fixed(model, pool, {"r0": 1.0})
    with pytest.raises(ValueError, match="generate_batch decodes each prompt with its own mixture"):
        router.generate_batch([PROMPT, PROMPT], max_tokens=2, fold="requantize")
    out = router.generate(PROMPT, max_tokens=4, temperature=0, fold="requantize")  # the routers pass it on
    assert out.tokens == model.generate(PROMPT, max_tokens=4, temperature=0, adapters={"r0": 1.0},
                                        fold="requantize").tokens
    with pytest.raises(ValueError, match="fold = exact folds only into F32, F16 or BF16 weights"):
        model.folded_weights({"r0": 1.0}, fold="exact")


def test_type_without_a_quantizer_is_refused(tmp_path):
    """IQ2_XXS: ggml's CPU dequantizes it but has no quantizer without an importance matrix."""
    path = tmp_path / "iq2.gguf"
    writer = GGUFWriter(str(path), SPEC.arch)
    synthetic._write_header(writer, SPEC)
    for name, array in synthetic.model_tensors(SPEC).items():
        if name == "blk.0.attn_q.weight":
            n_out, n_in = array.shape
            blocks = np.random.default_rng(0).integers(0, 256, size=(n_out, n_in // 256, 66), dtype=np.uint8)
            blocks[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)  # sane block scales
            writer.add_tensor(name, blocks.reshape(n_out, -1), raw_dtype=GGMLQuantizationType.IQ2_XXS)
        else:
            synthetic._add(writer, name, array)
    synthetic._finish(writer)
    adapter = synthetic.write_adapter(tmp_path / "a.gguf", SPEC, rank=8, alpha=16.0, seed=3)
    model, _pool = load(path, {"a": adapter})
    with pytest.raises(ValueError, match="'blk.0.attn_q.weight' of type iq2_xxs.*use fold = exact or upcast"):
        model.generate(PROMPT, max_tokens=2, adapters={"a": 1.0}, fold="requantize")
    assert model.generate(PROMPT, max_tokens=2, adapters={"a": 1.0}).finish_reason  # exact still works
    # upcast needs only a dequantizer for the weight's type: the IQ2_XXS weight is folded into Q8_0.
    folded = model.folded_weights({"a": 1.0}, fold="upcast")
    assert folded["blk.0.attn_q.weight"][0] == "q8_0"
    assert model.generate(PROMPT, max_tokens=2, adapters={"a": 1.0}, fold="upcast").finish_reason


def test_cli_run_fold_flag(files, tmp_path):
    import json
    import subprocess
    import sys

    _, bases, adapters = files
    args = [sys.executable, "-m", "logo_cpp.cli", "run", "-m", str(bases["q4_1"]), "-a", str(adapters["r0"]),
            str(adapters["r1"]), "-p", PROMPT, "-n", "6", "--k", "2", "--threads", str(THREADS), "--json"]
    out = subprocess.run(args + ["--fold", "requantize"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    mixture = {s["name"]: s["weight"] for s in data["routing"]["selected"]}
    model, _pool = load(bases["q4_1"], {k: adapters[k] for k in ("r0", "r1")})
    expected = model.generate(PROMPT, max_tokens=6, temperature=0, adapters=mixture, fold="requantize")
    assert data["text"] == expected.text
    bad = subprocess.run(args + ["--fold", "lossy"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "--fold: invalid choice: 'lossy'" in bad.stderr


def test_chat_session_checks_fold(files):
    from logo_cpp.chat import ChatSession

    _, bases, adapters = files
    model, pool = load(bases["q4_1"], {"r0": adapters["r0"]})
    with pytest.raises(ValueError, match="fold must be one of 'exact', 'requantize', 'requantize-stochastic', 'upcast', got 'lossy'"):
        ChatSession(model, pool, None, fold="lossy")
    session = ChatSession(model, pool, logo_cpp.Fixed(model, pool, {"r0": 1.0}), temperature=0.0, max_tokens=4,
                          fold="requantize")
    assert "".join(session.reply("Hi")) is not None


@pytest.mark.parametrize("base", ["q4_1", "q8_0"])
def test_stochastic_fold_keeps_small_changes(files, base):
    """An adapter's change is mostly below half a quantization step: nearest rounding gives most weights their
    old value back, unbiased rounding keeps the change on average. Retained fraction <F - W, delta> / |delta|^2
    over every adapted weight (W, F dequantized by gguf-py; delta from the adapter file by numpy)."""
    _, bases, adapters = files
    model, _pool = load(bases[base], adapters)
    mixture = {"r0": 0.01}
    stored = gguf_tensors(bases[base])
    retained = {}
    for fold in ("requantize", "requantize-stochastic"):
        num = den = 0.0
        for name, (_type, data) in model.folded_weights(mixture, fold=fold).items():
            t = stored[name]
            w = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            delta = reference_delta(adapters, mixture, name, w.shape)
            change = quants.dequantize(as_blocks(data, t), t.tensor_type) - w
            num, den = num + float((change * delta).sum()), den + float((delta * delta).sum())
        retained[fold] = num / den
    assert 0.9 < retained["requantize-stochastic"] < 1.1, retained
    if base == "q4_1":
        assert retained["requantize"] < 0.5, retained  # measured 0.06: nearest rounding erases most of it


# -- fold="upcast": the mixture folded into Q8_0 copies of quantized weights, whatever their type -----------

def assert_q8_0_of(data: bytes, exact: np.ndarray, name: str) -> None:
    """``data`` is ggml's Q8_0 quantization of float32 ``exact`` (n_out, n_in): gguf-py's reference quantizer's
    block scales bit for bit, and its quants except within float32 rounding of a half step, where ggml's x86
    quantizer (127 / amax, round half to even) may land one level from the reference's (see the module doc)."""
    ref = quants.quantize(exact, GGMLQuantizationType.Q8_0).reshape(-1, 34)
    ours = np.frombuffer(data, dtype=np.uint8).reshape(ref.shape)
    assert np.array_equal(ours[:, :2], ref[:, :2]), name
    q_ours, q_ref = ours[:, 2:].view(np.int8).astype(int), ref[:, 2:].view(np.int8).astype(int)
    amax = np.abs(exact.reshape(-1, 32)).max(axis=1, keepdims=True)
    scaled = exact.reshape(-1, 32) * (127.0 / np.where(amax == 0, 1, amax))
    near_tie = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-4
    differ = q_ours != q_ref
    assert np.all(np.abs(q_ours - q_ref) <= 1) and np.all(near_tie[differ]), name


def retyped_file(base_path, folded: dict, out):
    """The base GGUF with each folded tensor replaced by its folded bytes in the folded type (a new file: the
    types and sizes differ), every other tensor's bytes as stored; the header of SPEC (what the test bases hold)."""
    reader = GGUFReader(str(base_path))
    writer = GGUFWriter(str(out), SPEC.arch)
    synthetic._write_header(writer, SPEC)
    for t in reader.tensors:
        if t.name in folded:
            type_name, data = folded[t.name]
            kind = GGMLQuantizationType[type_name.upper()]
            n_out = int(t.shape[1])
            writer.add_tensor(t.name, np.frombuffer(data, dtype=np.uint8).reshape(n_out, -1), raw_dtype=kind)
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    synthetic._finish(writer)
    return out


@pytest.mark.parametrize("base", ["q4_0", "q4_1", "q4_k", "q8_0"])
def test_upcast_folded_weights_are_q8_0_of_the_exact_sum(files, base):
    """Every adapted weight comes back as Q8_0 (34 bytes per 32 elements), and its bytes are Q8_0 of
    dequantize(W) + delta (numpy/gguf-py reference, dyadic adapters: an exact delta)."""
    _, bases, adapters = files
    model, _pool = load(bases[base], adapters)
    folded = model.folded_weights(MIXTURE, fold="upcast")
    stored = gguf_tensors(bases[base])
    assert set(folded) == set(model.folded_weights(MIXTURE, fold="requantize"))
    for name, (type_name, data) in folded.items():
        t = stored[name]
        w = quants.dequantize(t.data, t.tensor_type)
        assert type_name == "q8_0" and len(data) == w.size // 32 * 34, name
        assert_q8_0_of(data, w + reference_delta(adapters, MIXTURE, name, w.shape).astype(np.float32), name)
    if base == "q8_0":  # Q8_0 weights: upcast is the requantizing fold
        assert folded == model.folded_weights(MIXTURE, fold="requantize")


@pytest.mark.parametrize("base", ["q4_1", "q4_k", "q8_0"])
def test_upcast_logits_equal_llama_cpp_on_the_retyped_file(files, tmp_path, base):
    """Computing with the upcast fold is running a model whose adapted weights are those Q8_0 tensors: llama.cpp
    (flash attention) on the base file with them written in gives our logits bit for bit, and greedy tokens."""
    _, bases, adapters = files
    mixture = {"r0": 0.5, "r1": 0.3, "r2": 0.2}
    model, _pool = load(bases[base], adapters)
    ids = model.tokenize(PROMPT)
    retyped = retyped_file(bases[base], model.folded_weights(mixture, fold="upcast"), tmp_path / "upcast.gguf")
    ours = model.logits(ids, adapters=mixture, fold="upcast")
    np.testing.assert_array_equal(ours, LlamaCpp(retyped).logits(ids))
    out = model.generate(PROMPT, max_tokens=6, temperature=0, ignore_eos=True, adapters=mixture, fold="upcast")
    assert out.tokens == LlamaCpp(retyped).greedy(ids, 6)


@pytest.mark.parametrize("base", ["q4_1", "q4_k"])
def test_upcast_keeps_small_changes_and_stays_near_the_exact_mixture(files, base):
    """A Q8_0 step is ~1/17 of a 4-bit one: of a small change (an adapter at weight 0.05), nearest rounding into
    Q8_0 keeps most (retained fraction <F - W, delta> / |delta|^2), where requantizing into Q4_1 keeps little;
    and the upcast model's logits stay within a tenth of the mixture's effect of the exact mixture's."""
    _, bases, adapters = files
    model, _pool = load(bases[base], adapters)
    mixture = {"r0": 0.05}
    stored = gguf_tensors(bases[base])
    num = den = 0.0
    for name, (_type, data) in model.folded_weights(mixture, fold="upcast").items():
        t = stored[name]
        w = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        delta = reference_delta(adapters, mixture, name, w.shape)
        change = quants.dequantize(np.frombuffer(data, dtype=np.uint8).reshape(w.shape[0], -1),
                                   GGMLQuantizationType.Q8_0) - w
        num, den = num + float((change * delta).sum()), den + float((delta * delta).sum())
    assert 0.8 < num / den < 1.2, num / den
    ids = model.tokenize(PROMPT)
    mixture = {"r0": 0.5, "r1": 0.3, "r2": 0.2}
    exact = model.logits(ids, adapters=mixture)
    upcast = np.abs(model.logits(ids, adapters=mixture, fold="upcast") - exact).mean()
    requantized = np.abs(model.logits(ids, adapters=mixture, fold="requantize") - exact).mean()
    effect = np.abs(model.logits(ids) - exact).mean()
    # Measured: upcast 0.045-0.055 of the effect, requantize 0.13-0.17 (q4_1, q4_k): a 4-bit copy would fail.
    assert upcast < 0.1 * effect and upcast < 0.5 * requantized, (upcast, requantized, effect)


@pytest.mark.parametrize("base", ["q4_0", "q4_k"])
def test_upcast_of_repacked_weights(files, tmp_path, base):
    """A weight in the CPU's repacked layout is read from the file; its Q8_0 copy is a plain tensor. The bytes are
    those of an unrepacked model, and the logits our own repacked model's on the retyped file."""
    _, bases, adapters = files
    mixture = {"r0": 0.6, "d0": 0.4}
    model, _pool = load(bases[base], adapters, repack=True)
    plain_model, _plain_pool = load(bases[base], adapters, repack=False)
    folded = plain_model.folded_weights(mixture, fold="upcast")
    assert model.folded_weights(mixture, fold="upcast") == folded
    retyped = retyped_file(bases[base], folded, tmp_path / "upcast.gguf")
    on_retyped = logo_cpp.Model(str(retyped), n_ctx=256, n_threads=THREADS, repack=True)
    ids = model.tokenize(PROMPT)
    np.testing.assert_array_equal(model.logits(ids, adapters=mixture, fold="upcast"), on_retyped.logits(ids))


def test_upcast_over_float_weights_is_the_exact_fold(files):
    _, bases, adapters = files
    mixture = {"r0": 0.7, "r1": 0.3}
    model, _pool = load(bases["f16"], adapters)
    assert {t for t, _ in model.folded_weights(mixture, fold="upcast").values()} == {"f16"}
    exact = model.generate(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, adapters=mixture)
    short = model.generate(PROMPT, max_tokens=3, temperature=0, ignore_eos=True, adapters=mixture, fold="upcast")
    assert short.tokens == exact.tokens[:3]


def test_upcast_refusals(files):
    """A batch of different mixtures cannot share one set of weights: ValueError naming upcast (Python and the
    C++ session alike); the routers pass fold="upcast" through to generate."""
    _, bases, adapters = files
    model, pool = load(bases["q4_1"], adapters)
    router = logo_cpp.Fixed(model, pool, {"r0": 1.0})
    with pytest.raises(ValueError, match="fold='upcast' folds one mixture.*generate_batch decodes each prompt with its own"):
        router.generate_batch([PROMPT, PROMPT], max_tokens=2, fold="upcast")
    out = router.generate(PROMPT, max_tokens=4, temperature=0, fold="upcast")
    assert out.tokens == model.generate(PROMPT, max_tokens=4, temperature=0, adapters={"r0": 1.0}, fold="upcast").tokens
    session = logo_cpp._core.Session(model._core, n_ctx=256, n_seq=2)
    _, sel0 = model._resolve_mixture({"r0": 1.0})
    _, sel1 = model._resolve_mixture({"r1": 1.0})
    ids = model.tokenize(PROMPT)
    with pytest.raises(ValueError, match="fold = upcast folds one mixture into the weights.*got 2 mixtures"):
        session.evaluate(0, 2, ids + ids, pool=pool._core, selections=[sel0, sel1], fold="upcast")
