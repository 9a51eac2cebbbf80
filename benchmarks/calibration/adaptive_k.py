"""Session-5 question (issue 11): do mixture weights from the calibrated scores, with an adaptive k, raise task
accuracy over the default router's k = 1 on the shipped pool?

    python benchmarks/calibration/adaptive_k.py --out docs/calibration/adaptive-k.json --threads 1

The rule: take the default router's calibrated scores z (zscore_sq, token mean, attn_v blocks 22-29; computed
in numpy from the cached hidden states exactly as study_accuracy.py does, which reproduces the runtime's
choices); when the top-2 margin z_1 - z_2 is below tau, mix the top 2 adapters with weights softmax(z / T),
else route to the top adapter alone (k = 1, its cached score). Every mixed prompt is generated (greedy, the
task's max_tokens, as measure.py). The grid (tau, T) is scored on half A; the best on half A is reported on
half B and on all prompts, next to the default (k = 1) and the oracle.

--fixed-k K instead measures a fixed k = K on all prompts with the weights LoGo uses today (the selected
adapters' raw signals normalised: the runtime's raw_signals, the paper's norm summed over the probed blocks)
and with softmax(z / T) of their calibrated scores (T from --temperature).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_accuracy as S  # noqa: E402
from correctness import max_tokens_for, scorer  # noqa: E402
from inpool import generic_states, load_inpool  # noqa: E402
from probe_data import read_adapter, read_norm_weights, read_rms_eps  # noqa: E402

GRID = [(0.5, 0.25), (0.5, 0.5), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (2.0, 0.5)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixed-k", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.5)
    args = ap.parse_args(argv)
    import logo_cpp
    from logo_cpp import default_model

    mp = str(default_model.base_model_path())
    nw, eps = read_norm_weights(mp), read_rms_eps(mp)
    pool_dir = Path("models/pool")
    model = logo_cpp.Model(mp, n_ctx=512, n_threads=args.threads)
    ip = load_inpool(model, pool_dir, args.cache)
    manifest, adapters, names, kept, own, half = ip.manifest, ip.adapters, ip.names, ip.kept, ip.own, ip.half
    gen = generic_states(model, args.cache)
    pool = S.Pool([read_adapter(str(p)) for _, p in adapters], ip.ev, gen, nw, eps, modules=("attn_v",))
    z = pool.scores(tuple(range(22, 30)), ("attn_v",), "mean", "sqz")
    k1 = S.gen_scores(pool_dir, kept, adapters, args.cache)
    order = np.argsort(-z, axis=1)
    top, second = order[:, 0], order[:, 1]
    margin = z[np.arange(len(z)), top] - z[np.arange(len(z)), second]
    default = np.array([k1[(i, int(c))] for i, c in enumerate(top)])
    oracle = np.array([k1[(i, int(o))] for i, o in enumerate(own)])

    score = scorer(None)
    core_pool = logo_cpp.AdapterPool(model, [f for _, f in adapters], names=names)

    def softmax_top(i, k, temp):
        sel = order[i, :k]
        w = np.exp((z[i, sel] - z[i, sel[0]]) / temp)
        return [(int(j), float(x)) for j, x in zip(sel, w / w.sum())]

    def mixed(rows, temp, selection=None):
        """Task scores of rows with the top 2 mixed by softmax(z / temp) (or selection(i): [(adapter, weight)])."""
        selection = selection or (lambda i: softmax_top(i, 2, temp))
        out = {}
        by_task: dict = {}
        for i in rows:
            by_task.setdefault(kept[i]["task"], []).append(i)
        for task, group in by_task.items():
            for s in range(0, len(group), 16):
                g = group[s:s + 16]
                sels = [selection(i) for i in g]
                kw = model._sampling_kwargs(max_tokens_for(manifest, task), 0.0, 40, 0.95, 0.05, 0, None, False)
                kw.update(pool=core_pool._core, selections=sels)
                outs = model._run([model._prompt_tokens(kept[i]["prompt"]) for i in g], kw)
                for i, o in zip(g, outs):
                    out[i] = score(task, o.text, kept[i]["answer"])
        return out

    def accuracy(rule_scores, rows):
        return float(np.mean([rule_scores[i] for i in rows]))

    A, B = np.flatnonzero(half == 1), np.flatnonzero(half == 0)
    if args.fixed_k:
        # The runtime's raw signal of a calibrated norm router: ||s B A x_mean|| summed over the probed blocks.
        raw = sum(np.sqrt(e) for e in S.block_energies(pool, tuple(range(22, 30)), "ev"))
        k = args.fixed_k

        def raw_top(i):
            sel = order[i, :k]
            return [(int(j), float(raw[i, j] / raw[i, sel].sum())) for j in sel]

        report = {"k": k, "oracle": float(oracle.mean()), "default_k1": float(default.mean())}
        for label, fn in (("raw weights (LoGo today)", raw_top),
                          (f"softmax(z / {args.temperature})", lambda i: softmax_top(i, k, args.temperature))):
            t0 = time.perf_counter()
            m = mixed(range(len(own)), args.temperature, fn)
            acc = np.array([m[i] for i in range(len(own))])
            report[label] = {"A": float(acc[A].mean()), "B": float(acc[B].mean()), "all": float(acc.mean())}
            print(f"k = {k}, {label}: half A {acc[A].mean():.3f} B {acc[B].mean():.3f} all {acc.mean():.3f} "
                  f"(default k=1 {default.mean():.3f}, oracle {oracle.mean():.3f}; {time.perf_counter() - t0:.0f} s)",
                  flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        return 0
    report = {"oracle": {"A": float(oracle[A].mean()), "B": float(oracle[B].mean()), "all": float(oracle.mean())},
              "default_k1": {"A": float(default[A].mean()), "B": float(default[B].mean()), "all": float(default.mean())},
              "grid": []}
    print(f"oracle A {oracle[A].mean():.3f} B {oracle[B].mean():.3f} all {oracle.mean():.3f}; default k=1 "
          f"A {default[A].mean():.3f} B {default[B].mean():.3f} all {default.mean():.3f}", flush=True)
    for tau, temp in GRID:
        t0 = time.perf_counter()
        rows = [i for i in A if margin[i] < tau]
        m = mixed(rows, temp)
        s = {i: m.get(i, default[i]) for i in A}
        row = {"tau": tau, "T": temp, "A": accuracy(s, A), "mixed_A": len(rows)}
        report["grid"].append(row)
        print(f"tau {tau} T {temp}: half A {row['A']:.3f} ({len(rows)} of {len(A)} mixed, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(report["grid"], key=lambda r: r["A"])
    rows = [i for i in B if margin[i] < best["tau"]]
    m = mixed(rows, best["T"])
    s = {i: m.get(i, default[i]) for i in B}
    best["B"] = accuracy(s, B)
    best["all"] = (best["A"] * len(A) + best["B"] * len(B)) / len(own)
    best["mixed_B"] = len(rows)
    report["chosen"] = best
    print(f"chosen on half A: tau {best['tau']} T {best['T']}: half B {best['B']:.3f} (default {default[B].mean():.3f},"
          f" oracle {oracle[B].mean():.3f}); all {best['all']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
