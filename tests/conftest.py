"""Test models are made once per session by logo_cpp.synthetic (random weights, a small tokenizer of its
own), quantized variants by llama.cpp's own quantizer; broken files by the same generator."""

from __future__ import annotations

import os

# ggml's CPU threads wait at each node's barrier through OpenMP, which spins by default: when the machine runs
# more busy threads than it has cores (CI runners, a shared dev box), every graph then waits on descheduled
# spinners (measured here: a 16-token greedy run 26 s instead of 1.5 s at load 15 on 2 cores). Tests check
# results, not speed, so they let waiting threads sleep. Set before ggml (and libgomp) load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

from logo_cpp import synthetic
from logo_cpp._llama_cpp import avoid_amx, cpu_has_amx

avoid_amx()  # llama.cpp as the oracle, off ggml's AMX matmul that crashes on this project's machines
# Where the oracle runs without repacked layouts (CPUs with AMX), ours must too for bit-equal kernels.
REPACK = not cpu_has_amx()

# 2 threads as CI; LOGO_TEST_THREADS=1 is much faster on an oversubscribed machine (ggml's threads spin).
THREADS = int(os.environ.get("LOGO_TEST_THREADS", "2"))


def _spec(arch, **kw):
    return synthetic.ModelSpec(arch=arch, **kw)


# Each architecture with its peculiarity: llama untied with llama-3 rope frequency factors, qwen2 tied
# with q/k/v biases, qwen3 with a head size other than n_embd / n_head. GQA everywhere.
SPECS = {
    "llama": dict(arch="llama", n_embd=128, n_layer=3, n_head=4, n_head_kv=2, n_ff=256, rope_freq_factors=True, seed=1),
    "qwen2": dict(arch="qwen2", n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, tied_output=True, seed=2),
    "qwen3": dict(arch="qwen3", n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, head_dim=48, seed=3),
    # K-quants need rows that are multiples of 256.
    "llama256": dict(arch="llama", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, seed=4),
}


@pytest.fixture(scope="session", autouse=True)
def calibration_cache_dir(tmp_path_factory) -> Path:
    """The calibration disk cache (logo_cpp.calibration_cache) is OFF for the suite, subprocesses included: a
    test that compares two computations of statistics must not get the first one's from disk. Tests of the
    cache pass their own directory (cache_dir=..., or the environment of a subprocess). The directory named
    here is a fresh one, so that nothing in the suite can touch the user's ~/.cache even with the cache on."""
    root = tmp_path_factory.mktemp("calibration-cache")
    before = {k: os.environ.get(k) for k in ("LOGO_CPP_CACHE_DIR", "LOGO_CPP_NO_CACHE")}
    os.environ["LOGO_CPP_CACHE_DIR"] = str(root)
    os.environ["LOGO_CPP_NO_CACHE"] = "1"
    yield root
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, kw in SPECS.items():
        synthetic.write_model(root / f"{name}-f32.gguf", _spec(**kw), dtype="f32")
    synthetic.write_model(root / "llama-f16.gguf", _spec(**SPECS["llama"]), dtype="f16")
    synthetic.write_model(root / "qwen3-bf16.gguf", _spec(**SPECS["qwen3"]), dtype="bf16")
    synthetic.quantize(root / "llama-f32.gguf", root / "llama-q8_0.gguf", "q8_0")
    synthetic.quantize(root / "qwen2-f32.gguf", root / "qwen2-q8_0.gguf", "q8_0")
    synthetic.quantize(root / "llama256-f32.gguf", root / "llama256-q4_k.gguf", "q4_k")
    synthetic.quantize(root / "llama256-f32.gguf", root / "llama256-q4_0.gguf", "q4_0")
    return root


@pytest.fixture(scope="session")
def adapter_dir(model_dir) -> Path:
    """Adapters for llama-f32 (and its quantized variants): mixed ranks, targets and types."""
    root = model_dir / "adapters"
    root.mkdir()
    spec = _spec(**SPECS["llama"])
    plans = [
        ("math", dict(targets=("attn_q", "attn_v"), rank=8, alpha=16.0, dtype="f32", seed=10)),
        ("sql", dict(targets=("attn_q", "attn_k", "attn_v", "attn_output"), rank=4, alpha=8.0, dtype="f32", seed=11)),
        ("poem", dict(targets=("attn_q", "ffn_gate", "ffn_up", "ffn_down"), rank=16, alpha=16.0, dtype="f16", seed=12)),
        ("code", dict(targets=("attn_q", "attn_v"), rank=8, alpha=0.0, dtype="f32", seed=13)),  # no alpha: scale 1
        ("chat", dict(targets=("attn_v", "ffn_up"), rank=8, alpha=16.0, dtype="f32", seed=14)),  # no attn_q
        ("legal", dict(targets=("attn_q", "attn_v"), rank=8, alpha=16.0, dtype="q8_0", seed=15)),
        ("mixed", dict(targets=("attn_q", "attn_v"), rank=8, ranks={"attn_v": 2}, alpha=8.0, dtype="bf16", seed=16)),
    ]
    for name, kw in plans:
        synthetic.write_adapter(root / f"{name}.gguf", spec, **kw)
    return root


@pytest.fixture(scope="session")
def broken_dir(model_dir) -> Path:
    root = model_dir / "broken"
    root.mkdir()
    spec = _spec(**SPECS["llama"])
    for kind in synthetic.BROKEN_KINDS:
        synthetic.write_broken(root / f"{kind}.gguf", kind, spec)
    return root


class LlamaCpp:
    """llama-cpp-python on the same file, as the oracle: flash attention and an F16 KV cache as ours."""

    def __init__(self, path, n_ctx=512):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                                   n_threads=THREADS, flash_attn=True, seed=0)
        self._adapters = {}

    def set_adapters(self, mixture: dict[str, float], adapter_dir: Path):
        lc = self.llama_cpp
        handles = []
        for name in mixture:
            if name not in self._adapters:
                handle = lc.llama_adapter_lora_init(self.llm.model, str(adapter_dir / f"{name}.gguf").encode())
                assert handle, name
                self._adapters[name] = handle
            handles.append(self._adapters[name])
        arr = (lc.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        scales = (ctypes.c_float * len(handles))(*mixture.values())
        assert lc.llama_set_adapters_lora(self.llm.ctx, arr, len(handles), scales) == 0

    def chat_template(self, messages, add_generation_prompt=True, template=None) -> bytes:
        """libllama's llama_chat_apply_template, called directly: the model's own template, or ``template`` (a
        name libllama knows, e.g. "llama3")."""
        lc = self.llama_cpp
        tmpl = template.encode() if template else lc.llama_model_chat_template(self.llm.model, None)
        assert tmpl, "the model file has a chat template"
        keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
        chat = (lc.llama_chat_message * len(keep))(*[lc.llama_chat_message(role=r, content=c) for r, c in keep])
        size = 256 + 2 * sum(len(r) + len(c) for r, c in keep)
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_chat_apply_template(tmpl, chat, len(keep), add_generation_prompt, buf, size)
        assert 0 < n <= size
        return buf.raw[:n]

    def logits(self, tokens):
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def greedy(self, tokens, n):
        """n argmax tokens over every token but the end-of-generation ones, which llama-server's ignore_eos
        masks (a -inf logit bias): what ignore_eos=True is compared with."""
        lc = self.llama_cpp
        vocab = lc.llama_model_get_vocab(self.llm.model)
        eog = [t for t in range(lc.llama_vocab_n_tokens(vocab)) if lc.llama_vocab_is_eog(vocab, t)]
        self.llm.reset()
        self.llm.eval(list(tokens))
        out = []
        for _ in range(n):
            scores = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
            scores[eog] = -np.inf
            tok = int(np.argmax(scores))
            out.append(tok)
            self.llm.eval([tok])
        return out


@pytest.fixture(scope="session")
def llama_cpp_oracle():
    cache = {}

    def get(path):
        key = str(path)
        if key not in cache:
            cache[key] = LlamaCpp(path)
        return cache[key]

    return get
