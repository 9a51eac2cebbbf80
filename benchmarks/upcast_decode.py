"""Decode speed of fold="upcast" next to the exact pair and the base, logo-cpp alone (issue 15, docs section 12).

`logo-cpp bench quant --upcast` measures the same rows next to llama.cpp, but llama.cpp's own k-adapter rows take
minutes a repetition on a loaded machine; this runs only logo-cpp's rows, each repetition measuring the base and
every variant back to back (the order rotating), and reports per-repetition ratios to the base (medians, ranges).
Same setup as bench quant: the same 20 synthetic rank-8 F16 adapters on attn_q/attn_v of every block (its workdir),
scale 1/k, a 150-token prompt, 64 decode steps, greedy with ignore_eos.

    python benchmarks/upcast_decode.py --model BASE.gguf --ks 8 20 --reps 7 --threads 2 --out docs/bench/upcast
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import logo_cpp
from logo_cpp.bench import common, quant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--ks", nargs="+", type=int, default=[8, 20])
    p.add_argument("--folds", nargs="+", default=["exact", "upcast"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0, help="stop starting repetitions after this many seconds (0: none)")
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "logo-cpp-bench")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    model_path = args.model or quant.default_model()
    adapters = quant.ensure_adapters(quant.default_model(), args.workdir, max(args.ks), 8, ["attn_q", "attn_v"], "f16")
    model = logo_cpp.Model(str(model_path), n_ctx=1024, n_threads=args.threads, repack=False)
    pool = logo_cpp.AdapterPool(model, adapters[: max(args.ks)])
    ids = common.prompt_tokens(model, 150)
    gen = dict(max_tokens=65, temperature=0.0, ignore_eos=True, seed=0)
    configs = [("base", 0, "exact")] + [(f"{k} {fold}", k, fold) for k in args.ks for fold in args.folds]
    samples = {name: {"decode": [], "prefill": [], "setup": []} for name, _, _ in configs}
    load_before, t0 = os.getloadavg(), time.perf_counter()
    done = 0
    for rep in range(args.reps + 1):  # the first repetition warms caches and is dropped
        if args.budget and rep > 1 and time.perf_counter() - t0 > args.budget:
            break
        order = configs[rep % len(configs):] + configs[: rep % len(configs)]
        for name, k, fold in order:
            mixture, _ = common.equal_mixture(pool, adapters, k)
            if mixture:
                mixture = dict(mixture, fold=fold)
            prefill, decode, setup = quant.timed_rates(model._session, ids, gen, mixture)
            if rep:
                samples[name]["decode"].append(decode)
                samples[name]["prefill"].append(prefill)
                samples[name]["setup"].append(setup)
        done = rep
        print(f"rep {rep}: " + ", ".join(f"{n} {s['decode'][-1]:.1f}" for n, s in samples.items() if s["decode"]), flush=True)
    rows = {}
    for name, s in samples.items():
        ratios = [d / b for d, b in zip(s["decode"], samples["base"]["decode"])]
        pre = [d / b for d, b in zip(s["prefill"], samples["base"]["prefill"])]
        rows[name] = {"decode": statistics.median(s["decode"]), "prefill": statistics.median(s["prefill"]),
                      "setup_ms": 1000 * statistics.median(s["setup"]),
                      "decode_vs_base": statistics.median(ratios), "decode_vs_base_range": [min(ratios), max(ratios)],
                      "prefill_vs_base": statistics.median(pre), "samples": s}
    res = {"model": Path(model_path).name, "threads": args.threads, "reps": done, "load_before": load_before,
           "load_after": os.getloadavg(), "seconds": time.perf_counter() - t0, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"upcast-decode-{Path(model_path).stem}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# fold='upcast' decode, logo-cpp alone ({res['model']}, {args.threads} threads, {done} repetitions, "
             f"load {'/'.join(f'{x:.2f}' for x in load_before)} before, "
             f"{'/'.join(f'{x:.2f}' for x in res['load_after'])} after)", "",
             "| row | decode tok/s | decode vs base [range] | prefill tok/s | prefill vs base | setup ms |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lo, hi = r["decode_vs_base_range"]
        lines.append(f"| {name} | {r['decode']:.1f} | {r['decode_vs_base']:.3f} [{lo:.2f}-{hi:.2f}] | {r['prefill']:.1f} | "
                     f"{r['prefill_vs_base']:.3f} | {r['setup_ms']:.1f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
