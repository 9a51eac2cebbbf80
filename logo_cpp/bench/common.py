"""Shared pieces of the benchmarks: the model files, both runtimes on the same file, timing helpers."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from logo_cpp import synthetic
from ..cli import positive_int, thread_count

# About 150M parameters: 12 blocks of width 768, a 32k vocabulary, untied head.
SPEC_150M = dict(arch="llama", n_embd=768, n_layer=12, n_head=12, n_head_kv=4, n_ff=2560, seed=7)
# About 1B parameters (optional, --size 1b).
SPEC_1B = dict(arch="llama", n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=5632, seed=7)


# Both runners prefill a benchmark prompt in one batch of this many tokens (llama.cpp's n_batch here): a longer
# prompt would trip llama.cpp's assertion n_tokens <= n_batch, which aborts the process.
PROMPT_BATCH = 512


def prompt_length(text: str) -> int:
    """argparse type for --prompt: a token count in [1, PROMPT_BATCH]."""
    import argparse

    value = positive_int(text)
    if value > PROMPT_BATCH:
        raise argparse.ArgumentTypeError(f"expected at most {PROMPT_BATCH} prompt tokens (both runners prefill the "
                                         f"prompt in one batch of {PROMPT_BATCH}), got {value}")
    return value


def spec_for(size: str) -> synthetic.ModelSpec:
    base = SPEC_150M if size == "150m" else SPEC_1B
    spec = synthetic.ModelSpec(**base)
    spec.extra_vocab = 32000 - spec.n_vocab()
    return spec


DEFAULT_OUT = Path("logo-cpp-bench")


def add_common_args(parser, reps: int) -> None:
    """The options every benchmark takes: model size, threads, repetitions, where files go."""
    from logo_cpp import _core

    parser.add_argument("--size", choices=["150m", "1b"], default="150m",
                        help="shape of the random-weight model (default 150m: ~139M parameters)")
    parser.add_argument("--threads", type=thread_count, default=_core.default_thread_count(),
                        help="threads for both runtimes (default: this machine's cores)")
    parser.add_argument("--reps", type=positive_int, default=reps, help=f"repetitions per measurement; medians (default {reps})")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "logo-cpp-bench",
                        help="where the generated models and adapters are kept and reused")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where JSON, markdown and PNG plots are written (default ./{DEFAULT_OUT})")


def check_types(option: str, types) -> None:
    bad = [t for t in types if t not in synthetic.FTYPES]
    if bad:
        raise ValueError(f"{option}: unknown weight type {bad[0]!r}; expected one of {', '.join(synthetic.FTYPES)}")


def ensure_models(workdir: Path, size: str, types=("f16", "q8_0", "q4_0")) -> dict[str, Path]:
    """Writes the F16 model once, then llama.cpp quantizes it; files are reused between runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = spec_for(size)
    f16 = workdir / f"bench-{size}-f16.gguf"
    if not f16.exists():
        synthetic.write_model(f16, spec, "f16")
    out = {"f16": f16}
    for t in types:
        if t == "f16":
            continue
        path = workdir / f"bench-{size}-{t}.gguf"
        if not path.exists():
            synthetic.quantize(f16, path, t)
        out[t] = path
    return out


def ensure_adapters(workdir: Path, size: str, n: int, rank: int = 16, targets=("attn_q", "attn_v")) -> list[Path]:
    """n rank-r adapters on attn_q and attn_v of every layer (the paper's pool shape), F32 as llama.cpp's
    converter writes them by default."""
    spec = spec_for(size)
    root = workdir / f"adapters-{size}-r{rank}"
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"task{i:04d}.gguf"
        if not path.exists():
            synthetic.write_adapter(path, spec, targets=targets, rank=rank, alpha=2.0 * rank, seed=1000 + i)
        paths.append(path)
    return paths


def prompt_tokens(model, n: int) -> list[int]:
    words = ("the quick brown fox jumps over the lazy dog and the cat sat on the mat while numbers "
             "like 12345 and words mixed with symbols fill the world of answers ").split()
    ids = model.tokenize(" ".join(words * 20))
    return ids[:n]


def repack() -> bool:
    """Whether logo-cpp uses the CPU's repacked weight layouts (Q4_0, Q4_K, IQ4_NL on x86) in a benchmark: as
    LlamaCppRunner's llama.cpp does, so both run the same kernels. Where the CPU has AMX llama.cpp loads without
    them (logo_cpp._llama_cpp.model_params), so ours must too; a repacked Q4_0 against llama.cpp's plain one
    measured layouts, not runtimes."""
    from .._llama_cpp import cpu_has_amx

    return not cpu_has_amx()


def logo_model(path, n_ctx: int, threads: int):
    """logo_cpp.Model for a side-by-side benchmark: the same weight layouts as llama.cpp's (repack())."""
    import logo_cpp

    return logo_cpp.Model(path, n_ctx=n_ctx, n_threads=threads, repack=repack())


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python's low-level API: flash attention on (llama.cpp's default on the
    CPU), F16 KV cache, one KV stream per sequence (kv_unified off), greedy argmax in numpy."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 1024, n_seq: int = 1):
        import llama_cpp as lc

        self.lc = lc
        from .._llama_cpp import model_params, quiet

        quiet()  # llama.cpp's loader and context logs (~900 lines per model) stay off the benchmark's output
        mp = model_params()  # off ggml's AMX matmul where the CPU has it (see logo_cpp/_llama_cpp.py)
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = PROMPT_BATCH
        cp.n_ubatch = 512
        cp.n_seq_max = n_seq
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.kv_unified = False
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.adapters = {}

    def close(self):
        self.lc.llama_free(self.ctx)
        for handle in self.adapters.values():
            self.lc.llama_adapter_lora_free(handle)
        self.lc.llama_model_free(self.model)

    def set_adapters(self, paths_scales: list[tuple[Path, float]]):
        lc = self.lc
        handles = []
        for path, _ in paths_scales:
            key = str(path)
            if key not in self.adapters:
                self.adapters[key] = lc.llama_adapter_lora_init(self.model, key.encode())
            handles.append(self.adapters[key])
        arr = (lc.llama_adapter_lora_p_ctypes * len(handles))(*handles) if handles else None
        scales = (ctypes.c_float * len(handles))(*[s for _, s in paths_scales]) if handles else None
        lc.llama_set_adapters_lora(self.ctx, arr, len(handles), scales)

    def _decode(self, tokens, seq_ids, positions, want_last=True):
        lc = self.lc
        batch = lc.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for i, (t, s, p) in enumerate(zip(tokens, seq_ids, positions)):
                batch.token[i] = t
                batch.pos[i] = p
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = s
                batch.logits[i] = False
            if want_last:
                # the last token of each sequence
                last = {}
                for i, s in enumerate(seq_ids):
                    last[s] = i
                for i in last.values():
                    batch.logits[i] = True
            rc = lc.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            return last if want_last else {}
        finally:
            lc.llama_batch_free(batch)

    def clear(self):
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def logits_row(self, i):
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids, seq=0):
        """Seconds to evaluate the prompt; returns (seconds, first token)."""
        t0 = time.perf_counter()
        last = self._decode(ids, [seq] * len(ids), list(range(len(ids))))
        tok = int(np.argmax(self.logits_row(last[seq])))
        return time.perf_counter() - t0, tok

    def decode(self, first_tokens: list[int], start_positions: list[int], n: int):
        """n greedy steps for len(first_tokens) sequences decoded together; returns seconds."""
        tokens, pos = list(first_tokens), list(start_positions)
        seqs = list(range(len(tokens)))
        t0 = time.perf_counter()
        for _ in range(n):
            last = self._decode(tokens, seqs, pos)
            tokens = [int(np.argmax(self.logits_row(last[s]))) for s in seqs]
            pos = [p + 1 for p in pos]
        return time.perf_counter() - t0


def equal_mixture(pool, adapters: list[Path], k: int) -> tuple[dict, list[tuple[Path, float]]]:
    """The mixture of the pool's first k adapters at scale 1/k each, as each runtime takes it: (logo-cpp's
    generate() keyword arguments, llama.cpp's [(adapter file, scale)]). k = 0: the base model in both."""
    if k == 0:
        return {}, []
    return (dict(pool=pool._core, selections=[[(i, 1.0 / k) for i in range(k)]]),
            [(adapters[i], 1.0 / k) for i in range(k)])


def logo_rates(session, ids: list[int], gen: dict, mixture: dict) -> tuple[float, float]:
    """logo-cpp's (prefill, decode) tokens/s for one prompt: ``session.generate`` with ``gen`` (max_tokens,
    sampling) and ``mixture`` (equal_mixture's first part), from the timings it reports."""
    t = session.generate([ids], **gen, **mixture)[0]["timings"]
    return t["prefill_tokens_per_second"], t["decode_tokens_per_second"]


def llama_rates(runner: "LlamaCppRunner", ids: list[int], n_decode: int,
                adapters: list[tuple[Path, float]]) -> tuple[float, float]:
    """llama.cpp's (prefill, decode) tokens/s for one prompt with the adapter set ``adapters`` (equal_mixture's
    second part), from an empty KV cache: the prompt's evaluation, then n_decode greedy steps."""
    runner.set_adapters(adapters)
    runner.clear()
    t_prefill, tok = runner.prefill(ids)
    return len(ids) / t_prefill, n_decode / runner.decode([tok], [len(ids)], n_decode)


def median(xs):
    return float(statistics.median(xs))


def describe_machine(m: dict) -> str:
    """One line for a report: CPU, cores, threads and both runtimes' versions."""
    return (f"Machine: {m.get('cpu') or m['machine']}, {m['cores']} cores, {m['threads']} threads; "
            f"llama-cpp-python {m['llama_cpp_python']}, logo-cpp {m['logo_cpp']}"
            + ({True: "; repacked CPU weight layouts in both runtimes", False: "; no repacked CPU weight layouts in "
                "either runtime (the CPU has AMX)"}.get(m.get("repacked_layouts"), "")) + ".")


def machine_info(threads: int) -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "cores": os.cpu_count(), "threads": threads}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import llama_cpp
    import logo_cpp

    info["llama_cpp_python"] = llama_cpp.__version__
    info["logo_cpp"] = logo_cpp.__version__
    info["repacked_layouts"] = repack()  # in both runtimes, or in neither
    return info


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
