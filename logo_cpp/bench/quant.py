"""Mixtures on quantized bases: prefill and decode with a k-adapter mixture against the same base model,
logo-cpp and llama.cpp side by side in one run on the same files, threads, adapters and scales (1/k each).

The base is the shipped default model (SmolLM2-135M-Instruct, Q4_1) when it is installed, else the
synthetic ~150M model of `logo-cpp bench core`; each weight type is made from it by llama.cpp's own
quantizer (requantizing a quantized file, as llama-quantize --allow-requantize). The adapters are synthetic
rank-8 LoRAs on attn_q and attn_v of every layer, stored F16 (as the shipped pool) unless --adapter-type
says otherwise. Every repetition measures the base and each k back to back, alternating which runtime goes
first, so ratios come from neighbouring measurements on a shared machine; the report gives medians and the
spread of the per-repetition ratios.

    logo-cpp bench quant [--model PATH | --synthetic] [--types q4_1 q4_k q8_0] [--ks 1 8 20] [--reps 5]
                         [--kernels-off 8 20] [--fold 1 8 20] [--upcast 1 8 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import logo_cpp
from logo_cpp import synthetic

from . import common
from .._llama_cpp import cpu_has_amx
from ..cli import positive_int


def base_files(model: Path, workdir: Path, types) -> dict[str, Path]:
    """{type: path}: the model itself where it already has that type, else llama.cpp's quantization of it
    (kept in workdir and reused)."""
    workdir.mkdir(parents=True, exist_ok=True)
    own = file_type(model)
    out = {}
    for t in types:
        if t == own:
            out[t] = model
            continue
        path = workdir / f"{model.stem}.{t}.gguf"
        if not path.exists():
            synthetic.quantize(model, path, t, allow_requantize=own not in ("f32", "f16", "bf16"))
        out[t] = path
    return out


def file_type(path: Path) -> str:
    """The FTYPES name of a model file's general.file_type ('' when absent or unknown)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return ""
    by_number = {v: k for k, v in synthetic.FTYPES.items()}
    return by_number.get(int(field.contents()), "")


def tensor_types(path: Path) -> str:
    """The types of a file's 2-D weights, most common first, e.g. 'q4_K 121, q5_0 90, q6_K 31'."""
    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name.lower() for t in GGUFReader(str(path)).tensors if len(t.shape) > 1)
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


def parse_layers(text: str) -> list[int] | None:
    """--layers: 'all' (None: every block) or 'FIRST-LAST' (inclusive)."""
    if text == "all":
        return None
    first, sep, last = text.partition("-")
    if not first.isdigit() or (sep and not last.isdigit()):
        raise ValueError(f"--layers: expected 'all' or FIRST-LAST (e.g. 18-29), got {text!r}")
    return list(range(int(first), int(last if sep else first) + 1))


def ensure_adapters(base: Path, workdir: Path, n: int, rank: int, targets, dtype: str, layers: str = "all") -> list[Path]:
    blocks = parse_layers(layers)
    suffix = "" if blocks is None else f"-blk{layers}"
    root = workdir / f"adapters-{base.stem}-r{rank}-{'-'.join(targets)}-{dtype}{suffix}"
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"a{i:03d}.gguf"
        if not path.exists():
            synthetic.write_adapter(path, base, targets=tuple(targets), rank=rank, alpha=2.0 * rank, dtype=dtype,
                                    seed=2000 + i, layers=blocks)
        paths.append(path)
    return paths


def timed_rates(session, ids: list[int], gen: dict, mixture: dict) -> tuple[float, float, float]:
    """common.logo_rates plus the call's setup time in seconds: its wall time minus the prefill and decode it
    reports (building the mixture's pair, and with fold="requantize" the fold, which precede the prefill)."""
    t0 = time.perf_counter()
    t = session.generate([ids], **gen, **mixture)[0]["timings"]
    wall = time.perf_counter() - t0
    return t["prefill_tokens_per_second"], t["decode_tokens_per_second"], wall - t["prefill_seconds"] - t["decode_seconds"]


def bench_type(path: Path, adapters: list[Path], ks, threads: int, reps: int, n_prompt: int, n_decode: int,
               repack: bool, kernels_off=(), folds=(), upcasts=()) -> dict:
    """Rows keyed "0" (the base), "k", "k-ggml" for every k in kernels_off: logo-cpp alone with its
    single-node decode kernels of Q8_0 pairs turned off (LOGO_PAIR_MATVEC=0: ggml's matmuls, the same numbers),
    and "k-fold" for every k in folds: logo-cpp alone with fold="requantize" (the mixture folded into requantized
    copies of the adapted weights: lossy), "k-upcast" for every k in upcasts: fold="upcast" (folded into Q8_0
    copies), measured in the same repetitions, so that their effect is a side-by-side ratio too. Every logo-cpp
    row also records its setup time (timed_rates)."""
    ours = logo_cpp.Model(path, n_ctx=1024, n_threads=threads, repack=repack)
    pool = logo_cpp.AdapterPool(ours, adapters[: max(ks)])
    theirs = common.LlamaCppRunner(path, threads)
    ids = common.prompt_tokens(ours, n_prompt)
    session = ours._session
    gen = dict(max_tokens=n_decode + 1, temperature=0.0, ignore_eos=True, seed=0)
    keys = ("logo_prefill", "logo_decode", "logo_setup", "llama_prefill", "llama_decode")
    configs = ([("0", 0, "exact")] + [(str(k), k, "exact") for k in ks] + [(f"{k}-ggml", k, "ggml") for k in kernels_off]
               + [(f"{k}-fold", k, "fold") for k in folds] + [(f"{k}-upcast", k, "upcast") for k in upcasts])
    samples = {name: {key: [] for key in keys} for name, _, _ in configs}
    for rep in range(reps + 1):  # the first repetition warms caches and is dropped
        for name, k, variant in configs:
            mixture, llama_mixture = common.equal_mixture(pool, adapters, k)
            if variant in ("fold", "upcast") and mixture:
                mixture = dict(mixture, fold="requantize" if variant == "fold" else "upcast")
            runtimes = ("logo", "llama") if variant == "exact" else ("logo",)
            for runtime in (runtimes if rep % 2 == 0 else runtimes[::-1]):
                if runtime == "logo":
                    before = os.environ.get("LOGO_PAIR_MATVEC")
                    os.environ["LOGO_PAIR_MATVEC"] = "0" if variant == "ggml" else "1"
                    try:
                        prefill, decode, setup = timed_rates(session, ids, gen, mixture)
                    finally:
                        if before is None:
                            os.environ.pop("LOGO_PAIR_MATVEC")
                        else:
                            os.environ["LOGO_PAIR_MATVEC"] = before
                    if rep:
                        samples[name]["logo_setup"].append(setup)
                else:
                    prefill, decode = common.llama_rates(theirs, ids, n_decode, llama_mixture)
                if rep:
                    samples[name][f"{runtime}_prefill"].append(prefill)
                    samples[name][f"{runtime}_decode"].append(decode)
    theirs.close()
    del pool
    rows = {}
    for name, s in samples.items():
        row = {key: common.median(v) if v else None for key, v in s.items()}
        for runtime in ("logo", "llama"):
            for phase in ("prefill", "decode"):
                if not s[f"{runtime}_{phase}"]:
                    continue
                # Each repetition's mixture against the base measured next to it.
                ratios = [m / b for m, b in zip(s[f"{runtime}_{phase}"], samples["0"][f"{runtime}_{phase}"])]
                row[f"{runtime}_{phase}_vs_base"] = common.median(ratios)
                row[f"{runtime}_{phase}_vs_base_range"] = [min(ratios), max(ratios)]
        row["decode_logo_over_llama"] = (row["logo_decode"] / row["llama_decode"]
                                         if row["llama_decode"] and row["logo_decode"] else None)
        row["samples"] = s
        rows[name] = row
    return {"file": path.name, "tensor_types": tensor_types(path), "rows": rows}


def report(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Mixtures on quantized bases ({res['model']})", "",
             f"{common.describe_machine(m)} Prompt {res['prompt_tokens']} tokens, {res['decode_tokens']} decode steps, "
             f"medians of {res['reps']} repetitions; 'vs base' is each repetition's mixture over the base measured "
             f"next to it (median, and the range over repetitions in brackets). Load average (1/5/15 min) before "
             f"{'/'.join(f'{x:.2f}' for x in res['load_before'])}, after {'/'.join(f'{x:.2f}' for x in res['load_after'])}.", "",
             f"Adapters: {res['adapters']}, scale 1/k each, the same files and scales in both runtimes. "
             f"Weight layouts: {res['layouts']}.", ""]
    if any(k.endswith("-ggml") for r in res["types"].values() for k in r["rows"]):
        lines += ["Rows 'k (ggml matmuls)': logo-cpp alone, with its single-node decode kernels of Q8_0 pairs turned off "
                  "(LOGO_PAIR_MATVEC=0: ggml's matmuls and adds, the same numbers), in the same repetitions.", ""]
    if any(k.endswith("-fold") for r in res["types"].values() for k in r["rows"]):
        lines += ["Rows 'k (requantized fold)': logo-cpp alone with fold=\"requantize\": the mixture folded into "
                  "requantized copies of the adapted weights (W' = quantize(dequantize(W) + sum w s B A); LOSSY), in the "
                  "same repetitions. 'setup ms': each call's wall time minus its prefill and decode (building the "
                  "mixture, and the fold), median.", ""]
    if any(k.endswith("-upcast") for r in res["types"].values() for k in r["rows"]):
        lines += ["Rows 'k (upcast fold)': logo-cpp alone with fold=\"upcast\": the mixture folded into Q8_0 copies of "
                  "the adapted weights (W' = quantize_Q8_0(dequantize(W) + sum w s B A); an error of a Q8_0 step), in "
                  "the same repetitions; 'setup ms' as above.", ""]
    for t, r in res["types"].items():
        lines += [f"## {t} ({r['file']}: {r['tensor_types']})", "",
                  "| k | prefill logo-cpp | prefill llama.cpp | decode logo-cpp | decode llama.cpp | logo-cpp prefill vs base "
                  "| logo-cpp decode vs base | llama.cpp decode vs base | decode logo-cpp / llama.cpp | setup ms |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for k, row in r["rows"].items():
            def rel(key):
                if key not in row:
                    return "-"
                lo, hi = row[f"{key}_range"]
                return f"{row[key]:.3f} [{lo:.2f}-{hi:.2f}]"

            def num(key, digits):
                return "-" if row.get(key) is None else f"{row[key]:.{digits}f}"

            name = "base" if k == "0" else k.replace("-ggml", " (ggml matmuls)").replace("-fold", " (requantized fold)").replace(
                "-upcast", " (upcast fold)")
            setup = "-" if row.get("logo_setup") is None else f"{1000 * row['logo_setup']:.1f}"
            lines.append(f"| {name} | {num('logo_prefill', 1)} | {num('llama_prefill', 1)} | {num('logo_decode', 1)} | "
                         f"{num('llama_decode', 1)} | {rel('logo_prefill_vs_base')} | {rel('logo_decode_vs_base')} | "
                         f"{rel('llama_decode_vs_base')} | {num('decode_logo_over_llama', 2)} | {setup} |")
        lines.append("")
    return "\n".join(lines)


def default_model() -> Path:
    from .. import default_model as dm

    return dm.base_model_path()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="logo-cpp bench quant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="base model GGUF (default: the shipped SmolLM2-135M-Instruct Q4_1 if installed, else "
                             "the synthetic ~150M model)")
    parser.add_argument("--synthetic", action="store_true",
                        help="use the synthetic model of --size (rows of 768: real Q4_K matrices, where SmolLM2's "
                             "576-wide rows fall back to Q5_0)")
    parser.add_argument("--types", nargs="+", default=["q4_1", "q4_k", "q8_0"], help="weight types of the base")
    parser.add_argument("--ks", nargs="+", type=positive_int, default=[1, 8, 20], help="adapters per mixture")
    parser.add_argument("--rank", type=positive_int, default=8, help="rank of each adapter")
    parser.add_argument("--targets", nargs="+", default=["attn_q", "attn_v"], help="adapted modules")
    parser.add_argument("--layers", default="all",
                        help="adapted blocks: 'all' (default) or FIRST-LAST; the shipped pool adapts 18-29 of SmolLM2's 30")
    parser.add_argument("--adapter-type", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                        help="type the adapter files are stored in (default f16, as the shipped pool)")
    parser.add_argument("--kernels-off", nargs="*", type=positive_int, default=[], metavar="K",
                        help="also measure logo-cpp at these k with its single-node decode kernels of Q8_0 pairs off "
                             "(LOGO_PAIR_MATVEC=0: ggml's matmuls, the same numbers), rows 'K (ggml matmuls)'")
    parser.add_argument("--fold", nargs="*", type=positive_int, default=[], metavar="K",
                        help="also measure logo-cpp at these k with fold='requantize' (the mixture folded into "
                             "requantized copies of the adapted weights: lossy), rows 'K (requantized fold)'")
    parser.add_argument("--upcast", nargs="*", type=positive_int, default=[], metavar="K",
                        help="also measure logo-cpp at these k with fold='upcast' (the mixture folded into Q8_0 "
                             "copies of the adapted weights), rows 'K (upcast fold)'")
    parser.add_argument("--prompt", type=common.prompt_length, default=150, help="prompt tokens")
    parser.add_argument("--decode", type=positive_int, default=64, help="decode steps")
    common.add_common_args(parser, reps=5)
    args = parser.parse_args(argv)
    common.check_types("--types", args.types)
    parse_layers(args.layers)
    if min(args.ks) < 1:
        parser.error("--ks: every k must be >= 1")
    if any(k not in args.ks for k in args.kernels_off):
        parser.error("--kernels-off: every k must also be in --ks")
    if any(k not in args.ks for k in args.fold):
        parser.error("--fold: every k must also be in --ks")
    if any(k not in args.ks for k in args.upcast):
        parser.error("--upcast: every k must also be in --ks")

    model = args.model
    if args.synthetic:
        model = common.ensure_models(args.workdir, args.size, [])["f16"]
    elif model is None:
        try:
            model = default_model()
        except FileNotFoundError:
            model = common.ensure_models(args.workdir, args.size, [])["f16"]
    if not Path(model).is_file():
        parser.error(f"--model: no file '{model}'")
    model = Path(model)
    files = base_files(model, args.workdir / "quant-bases", args.types)
    adapters = ensure_adapters(model, args.workdir, max(args.ks), args.rank, args.targets, args.adapter_type, args.layers)
    # llama.cpp runs without its repacked layouts where the CPU has AMX (logo_cpp._llama_cpp); ours matches it.
    repack = not cpu_has_amx()
    res = {"machine": common.machine_info(args.threads), "load_before": os.getloadavg(), "model": model.name, "prompt_tokens": args.prompt,
           "decode_tokens": args.decode, "reps": args.reps,
           "adapters": f"{max(args.ks)} synthetic rank-{args.rank} LoRAs on {'/'.join(args.targets)} of "
                       f"{'every block' if args.layers == 'all' else 'blocks ' + args.layers}, {args.adapter_type.upper()}",
           "layouts": ("repacked CPU layouts (Q4_0, Q4_K, IQ4_NL) in both runtimes" if repack else
                       "no repacked CPU layouts in either runtime (this CPU has AMX: llama.cpp runs with --no-repack, "
                       "logo-cpp with repack=False); Q4_1 and Q8_0 have none on x86 anyway"),
           "types": {}}
    stem = f"quant-{model.stem}" + ("" if args.layers == "all" else f"-blk{args.layers}")
    for t in args.types:
        print(f"[{t}] {files[t].name} ({tensor_types(files[t])}) ...", flush=True)
        res["types"][t] = bench_type(files[t], adapters, args.ks, args.threads, args.reps, args.prompt, args.decode, repack,
                                     args.kernels_off, args.fold, args.upcast)
        for k, row in res["types"][t]["rows"].items():
            llama = row.get("llama_decode_vs_base")
            print(f"  k={k}: decode vs base {row['logo_decode_vs_base']:.3f} "
                  f"(llama.cpp {'-' if llama is None else f'{llama:.3f}'}), "
                  f"prefill vs base {row['logo_prefill_vs_base']:.3f}", flush=True)
        # Written after every base type, so that a run cut short by a time limit keeps the types it finished.
        res["load_after"] = os.getloadavg()
        text = report(res)
        common.write_json(args.out / f"{stem}.json", res)
        (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
