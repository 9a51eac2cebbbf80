"""Compare candidate LoGo calibrations on a pool: how often each ranks a prompt's own adapter first.

    python benchmarks/calibration/explore.py --pool-dir models/pool --model <base.gguf> --out docs/calibration/pool

Probes every evaluation prompt of the pool (and the shipped generic prompts) once through the runtime, caches
the hidden states at every block, then scores each candidate in numpy (candidates.py). Writes
``routing.json`` (every candidate, overall and per task) and prints the table sorted by own-adapter-first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from candidates import Candidate, Study, routing_metrics  # noqa: E402
from probe_data import ProbeSet, load_pool_dir, probe_set, read_adapter, read_norm_weights, read_rms_eps  # noqa: E402


def pool_adapters(pool_dir: Path, manifest: dict) -> list[tuple[str, Path]]:
    """(task name, adapter file) for every in-pool task of the manifest, else every adapters/*.gguf."""
    out = []
    for t in manifest.get("tasks", []):
        if t.get("adapter"):
            out.append((t.get("task") or t.get("name"), pool_dir / t["adapter"]))
    if not out:
        out = [(p.stem, p) for p in sorted((pool_dir / "adapters").glob("*.gguf"))]
    return out


def candidate_grid(adapted: list[int], positions=("last", "mean")) -> list[Candidate]:
    """Candidates over spans of the blocks the pool adapts (ascending ``adapted``)."""
    grid = []
    spans = {tuple(adapted[-n:]) for n in (1, 2, 4, 8) if n <= len(adapted)}
    spans |= {tuple(adapted), tuple(adapted[::2]), (adapted[len(adapted) // 2],)}
    spans = sorted(spans, key=lambda s: (len(s), s))
    for position in positions:
        for modules in (("attn_q",), ("attn_v",), ("attn_q", "attn_v")):
            for span in spans:
                for signal, calibrations in (("norm", ("none", "spectral", "zscore", "logz", "zeval", "running")),
                                             ("entropy", ("none", "zscore")),
                                             ("arrow", ("none", "zscore", "logz"))):
                    if position == "tok" and signal == "entropy":
                        continue
                    for calibration in calibrations:
                        for inp in (("h", "x") if signal != "entropy" else ("h",)):
                            grid.append(Candidate(signal, calibration, span, modules, position, inp))
    return grid


def runtime_grid(adapted: list[int], token_layers=()) -> list[Candidate]:
    """Only what the runtime's routers can run (LoGo / Arrow options): one module, position last or the token
    mean of the module input ("xmean", at blocks with cached token states), norm or arrow, calibration none /
    spectral / frobenius / zscore."""
    spans = sorted({(adapted[-1],), tuple(adapted[-4:]), tuple(adapted[-8:]), tuple(adapted[-12:]), tuple(adapted)},
                   key=len)
    grid = []
    for position in ("last", "xmean"):
        for module in ("attn_q", "attn_v"):
            for span in spans:
                if position == "xmean" and not set(span) <= set(token_layers):
                    continue
                for signal in ("norm", "arrow"):
                    for calibration in ("none", "spectral", "frobenius", "zscore"):
                        if signal == "arrow" and calibration in ("spectral", "frobenius"):
                            continue  # Arrow's signal is a cosine: a norm of B A does not apply
                        grid.append(Candidate(signal, calibration, span, (module,), position, "h"))
    return grid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-dir", type=Path, required=True)
    ap.add_argument("--model", required=True, help="the base model GGUF the pool was trained on")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="at most this many eval prompts per task (0: all)")
    ap.add_argument("--grid", choices=("explore", "runtime"), default="explore",
                    help="explore: the wide numpy grid; runtime: only what LoGo/Arrow options can run")
    ap.add_argument("--token-layers", type=int, nargs="*", default=[],
                    help="also keep every token's state at these blocks (the 'tok' position)")
    args = ap.parse_args(argv)

    import logo_cpp
    from logo_cpp import _core

    manifest, all_items = load_pool_dir(args.pool_dir)
    adapters = pool_adapters(args.pool_dir, manifest)
    names = [n for n, _ in adapters]
    keep = [i for i, it in enumerate(all_items) if it["task"] in names]
    if args.limit:
        seen: dict = {}
        keep = [i for i in keep if seen.setdefault(all_items[i]["task"], []).append(1) or
                len(seen[all_items[i]["task"]]) <= args.limit]
    items = [all_items[i] for i in keep]
    own = np.array([names.index(it["task"]) for it in items])
    tasks = [it["task"] for it in items]
    print(f"{len(adapters)} adapters, {len(items)} in-pool eval prompts", flush=True)

    t0 = time.perf_counter()
    model = logo_cpp.Model(args.model, n_ctx=2048, n_threads=args.threads)
    # Every prompt of the eval set is probed (and cached) once, whatever subset this run studies.
    token_layers = tuple(args.token_layers)
    full = probe_set(model, [it["prompt"] for it in all_items], args.cache, "eval", token_layers)
    evalset = ProbeSet([full.prompts[i] for i in keep], full.last[keep], full.mean[keep], full.n_tokens[keep])
    if token_layers:
        offsets = full.offsets()
        evalset.tokens = np.concatenate([full.tokens[offsets[i]:offsets[i + 1]] for i in keep])
        evalset.token_layers = token_layers
    generic = probe_set(model, list(_core.calibration_prompts()), args.cache, "generic", token_layers)
    print(f"hidden states: {time.perf_counter() - t0:.0f} s", flush=True)

    study = Study([{"name": n, "pairs": read_adapter(str(p))} for n, p in adapters], evalset, generic,
                  read_norm_weights(args.model), read_rms_eps(args.model))
    n_layer = evalset.last.shape[1]
    adapted = sorted({l for a in study.adapters for (l, m) in a["pairs"] if m == "attn_q"})
    results = []
    t0 = time.perf_counter()
    grid = (runtime_grid(adapted, token_layers) if args.grid == "runtime" else
            candidate_grid(adapted, ("last", "mean", "tok") if token_layers else ("last", "mean")))
    for c in grid:
        if any(not any((l % n_layer, m) in a["pairs"] for a in study.adapters) for l in c.layers for m in c.modules):
            continue
        m = routing_metrics(study.scores(c), own, tasks, names)
        results.append({"candidate": c.label(), **c.__dict__, **m})
    # Single-block sweeps of the main candidates: where in the network the task is visible.
    sweeps = {}
    for signal, calibration, inp in () if args.grid == "runtime" else (("norm", "none", "h"), ("norm", "zscore", "h"), ("norm", "zscore", "hc"),
                                     ("arrow", "none", "h"), ("norm", "spectral", "h")):
        for position in ("last", "mean"):
            key = f"{signal}/{calibration} in={inp} {position}"
            sweeps[key] = {l: routing_metrics(study.scores(Candidate(signal, calibration, (l,), ("attn_q",), position, inp)),
                                              own, tasks, names)["own_first"] for l in adapted}
    print(f"{len(results)} candidates scored in {time.perf_counter() - t0:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"pool_dir": str(args.pool_dir), "model": args.model, "adapters": names, "n_prompts": len(items),
              "n_generic": len(generic.prompts), "candidates": results, "layer_sweeps": sweeps}
    (args.out / "routing.json").write_text(json.dumps(report, indent=1, default=list))
    results.sort(key=lambda r: -r["own_first"])
    print(f"\n{'candidate':<60} own-first  top-3  most chosen")
    for r in results[:60]:
        print(f"{r['candidate']:<60} {r['own_first']:.3f}     {r['own_top3']:.3f}  {r['most_chosen']} "
              f"({r['most_chosen_share']:.2f})")
    print("\nsingle-block sweeps (attn_q, own-first by block):")
    for key, values in sweeps.items():
        print(f"  {key:<34} " + " ".join(f"{l}:{v:.2f}" for l, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
