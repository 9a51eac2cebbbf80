"""Mixtures over quantized bases (Q4_1, Q4_K, Q8_0) against llama.cpp with the same scales, for adapters
stored F32, F16, BF16 and Q8_0.

Over a quantized base logo-cpp computes a mixture as one Q8_0 low-rank pair per adapted matrix, or, for a
pair below 0.4% of the base, one pair in the adapters' own types (cpp/src/mixture.cpp, pair_layout), where
llama.cpp runs each adapter as its own pair in the file's type and scales the product. Checks per case:
- the construction, bit for bit: llama.cpp running one adapter file that holds exactly the pair we build
  (tests/equivalent_pair.py: A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 | B_2 | ...], Q8_0 with ranks
  padded to 32, or the own types) reproduces our logits exactly, so scales, order, padding, types and the A
  shared by q/k/v and gate/up are right;
- the rounding, against llama.cpp on the adapter files themselves, within TOLERANCE of the adapters' effect;
  one tiny adapter at a power-of-two scale equals llama.cpp on its file bit for bit, whatever its type;
- decode steps (one token each), where a Q8_0 pair runs in logo-cpp's own kernels (cpp/src/pair_matvec.cpp):
  bit for bit llama.cpp on the equivalent pair, token by token, as for a whole prompt.

Why that tolerance, per adapter type. Our pair rounds, relative to llama.cpp:
- F32 adapters: A, B, the input x and A x to 8 bits (llama.cpp keeps all four F32);
- F16 and BF16 adapters: the same four to 8 bits (llama.cpp rounds them to 16 bits);
- Q8_0 adapters: A and x identically (Q8_0 in both); a rank < 32 B (F16 in the file) and A x to 8 bits.
Each 8-bit rounding is ~0.3% (RMS) of the adapter term. But on a quantized base the next matmul rounds its
input to 8 bits, and any change of the term, even one F16 rounding, moves some inputs across a rounding
boundary; llama.cpp's own logits then move by a few percent of the effect. Measured on these models
(max |difference| / max |effect|, docs/mixtures-on-quantized-bases.md): the same pair in F16 instead of Q8_0
vs the files 1.9-3.4%; our Q8_0 pair vs the files 1.7-4.5% for every adapter and base type alike. So
the bound is the same for every type, 8% (the measured worst case with a margin for other CPUs' kernels);
an error of scale (a missing alpha/r or weight) or a coarser type (4-bit) would exceed it.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import logo_cpp
from logo_cpp import synthetic

from conftest import REPACK, SPECS, THREADS
from equivalent_pair import layout_for, write_equivalent_pair

PROMPT = "Hello world, the cat sat on the mat and the dog jumps over the lazy fox"
BASES = ["q4_1", "q4_k", "q8_0"]
ADAPTER_TYPES = ["f32", "f16", "bf16", "q8_0"]
# Max |ours - llama.cpp| over max |llama.cpp with - without the adapters|; derived in the docstring.
TOLERANCE = {"f32": 0.08, "f16": 0.08, "bf16": 0.08, "q8_0": 0.08}


@pytest.fixture(scope="module")
def files(model_dir, tmp_path_factory):
    """llama256 (rows that K-quants accept) quantized by llama.cpp, and adapters of every type for it:
    three of rank 8 on attn_q/attn_v, one of rank 32 on every module (a Q8_0 B, and the q/k/v and gate/up
    input groups), and two tiny ones (rank 1 on attn_q/attn_v of block 1: a pair below 0.4% of the base, in the
    adapters' own types)."""
    root = tmp_path_factory.mktemp("quantized_mixtures")
    spec = synthetic.ModelSpec(**SPECS["llama256"])
    bases = {}
    for t in BASES:
        path = model_dir / f"llama256-{t}.gguf"
        if not path.exists():
            path = synthetic.quantize(model_dir / "llama256-f32.gguf", root / f"llama256-{t}.gguf", t)
        bases[t] = path
    adapters = {}
    for t in ADAPTER_TYPES:
        for i in range(3):
            name = f"{t}_qv{i}"
            adapters[name] = synthetic.write_adapter(root / f"{name}.gguf", spec, rank=8, alpha=16.0, dtype=t, seed=40 + i)
        name = f"{t}_all"
        adapters[name] = synthetic.write_adapter(root / f"{name}.gguf", spec, targets=tuple(spec.matrix_shapes()),
                                                 rank=32, alpha=16.0, dtype=t, seed=50)
        for i in range(2):  # tiny: rank 1, scale alpha/r = 8 (a power of two)
            name = f"{t}_tiny{i}"
            adapters[name] = synthetic.write_adapter(root / f"{name}.gguf", spec, rank=1, alpha=8.0, dtype=t, seed=60 + i,
                                                     layers=[1])
    return bases, adapters


class Oracle:
    """llama.cpp (flash attention, F16 KV cache, off AMX: conftest) on one base, adapters set per call."""

    def __init__(self, path):
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False,
                                   n_threads=THREADS, flash_attn=True, seed=0)
        self.handles = {}

    def logits(self, ids, adapters: dict):
        lc = self.lc
        handles = []
        for path in adapters:
            if str(path) not in self.handles:
                self.handles[str(path)] = lc.llama_adapter_lora_init(self.llm.model, str(path).encode())
                assert self.handles[str(path)], path
            handles.append(self.handles[str(path)])
        arr = (lc.llama_adapter_lora_p_ctypes * len(handles))(*handles) if handles else None
        scales = (ctypes.c_float * len(handles))(*adapters.values()) if handles else None
        assert lc.llama_set_adapters_lora(self.llm.ctx, arr, len(handles), scales) == 0
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def decode_logits(self, ids, n_prompt: int, adapters: dict):
        """Logits of ids[:n_prompt] as one batch, then of every later token as a decode step of its own."""
        self.logits(ids[:n_prompt], adapters)
        for tok in ids[n_prompt:]:
            self.llm.eval([tok])
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


@pytest.fixture(scope="module")
def oracles(files):
    bases, _ = files
    return {t: Oracle(path) for t, path in bases.items()}


MIXTURES = {
    "one": lambda t: {f"{t}_qv0": 1.0},
    "three": lambda t: {f"{t}_qv0": 0.5, f"{t}_qv1": 0.3, f"{t}_qv2": 0.2},
    "groups": lambda t: {f"{t}_all": 0.6, f"{t}_qv1": 0.4},
    "tiny": lambda t: {f"{t}_tiny0": 1.0},
    "tiny2": lambda t: {f"{t}_tiny0": 0.7, f"{t}_tiny1": 0.3},
}


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("adapter_type", ADAPTER_TYPES)
@pytest.mark.parametrize("base", BASES)
def test_quantized_base_mixture_against_llama_cpp(files, oracles, tmp_path, base, adapter_type, mixture):
    bases, adapters = files
    chosen = MIXTURES[mixture](adapter_type)
    model = logo_cpp.Model(bases[base], n_ctx=256, n_threads=THREADS, repack=REPACK)
    pool = logo_cpp.AdapterPool(model, [adapters[n] for n in chosen], names=list(chosen))
    ids = model.tokenize(PROMPT)
    ours, plain = model.logits(ids, adapters=chosen), model.logits(ids)
    oracle = oracles[base]
    by_file = {adapters[n]: w for n, w in chosen.items()}
    layout = layout_for(bases[base], by_file)
    assert layout == ("own" if mixture.startswith("tiny") else "q8_0")
    exact = oracle.logits(ids, {write_equivalent_pair(tmp_path / "pair.gguf", by_file, layout): 1.0})
    theirs = oracle.logits(ids, by_file)
    effect = np.abs(theirs - plain).max()
    error = np.abs(ours - theirs).max()
    np.testing.assert_array_equal(ours, exact)
    assert effect > 0.2 * np.abs(theirs).max()  # the adapters really change the output
    assert error <= TOLERANCE[adapter_type] * effect, (error, effect)
    if mixture == "tiny":
        # The adapter's own types at a power-of-two scale: exactly llama.cpp's computation.
        np.testing.assert_array_equal(ours, theirs)
    del pool


def our_decode_logits(model, ids, n_prompt: int, adapters: dict):
    """Our logits of ids[:n_prompt] as one batch, then of every later token as a decode step of its own (the
    session API that generation uses), with the mixture `adapters` in every step."""
    pool, selection = model._resolve_mixture(adapters)
    mixture = dict(pool=pool._core, selections=[selection])
    session = model._session
    session.clear(0)
    rows = [session.evaluate(0, 1, ids[:n_prompt], all_logits=True, **mixture)]
    rows += [session.evaluate(0, 1, [tok], **mixture) for tok in ids[n_prompt:]]
    session.clear(0)
    return np.concatenate(rows)


@pytest.mark.parametrize("mixture", ["three", "groups"])
@pytest.mark.parametrize("adapter_type", ["f16", "q8_0"])
@pytest.mark.parametrize("base", BASES)
def test_decode_steps_against_llama_cpp(files, oracles, tmp_path, base, adapter_type, mixture):
    """Decode steps, one token each: there a Q8_0 pair runs as the single-node kernels of cpp/src/pair_matvec.cpp
    (on x86 CPUs with AVX2), which must compute ggml's numbers: llama.cpp running the equivalent pair token by
    token gives our logits bit for bit, and the files themselves within the tolerance."""
    bases, adapters = files
    chosen = MIXTURES[mixture](adapter_type)
    model = logo_cpp.Model(bases[base], n_ctx=256, n_threads=THREADS, repack=REPACK)
    pool = logo_cpp.AdapterPool(model, [adapters[n] for n in chosen], names=list(chosen))
    ids = model.tokenize(PROMPT)
    n_prompt = 4
    ours = our_decode_logits(model, ids, n_prompt, chosen)
    by_file = {adapters[n]: w for n, w in chosen.items()}
    assert layout_for(bases[base], by_file) == "q8_0"
    oracle = oracles[base]
    exact = oracle.decode_logits(ids, n_prompt, {write_equivalent_pair(tmp_path / "pair.gguf", by_file, "q8_0"): 1.0})
    np.testing.assert_array_equal(ours, exact)
    theirs = oracle.decode_logits(ids, n_prompt, by_file)
    plain = oracle.decode_logits(ids, n_prompt, {})
    effect = np.abs(theirs - plain).max()
    assert np.abs(ours - theirs).max() <= TOLERANCE[adapter_type] * effect
    del pool
