"""Issue 11, session 5: the temperature T of LoGo's calibrated mixture weights, w_i = softmax(z_i / T) over the
top-k adapters' calibrated scores z (RouterOptions weights = softmax), chosen by a rule fixed before held-out
prompts were read.

    python benchmarks/calibration/mixture_temperature.py --out docs/calibration/mixture-temperature.json --threads 1

The rule: T in GRID with the best mean task accuracy at k = 3 on half A of BOTH pools (models/pool, shipped,
and models/pool-alt, another recipe), each pool weighted equally; ties go to the first T in grid order. The
chosen T is then reported on half B and on all prompts at k = 3, and checked at k = 5 (half A, half B, all).
The paper's weights (the selected adapters' raw signals, normalised) are measured next to it at the same k.

z is the default router's score (zscore_sq of ||R A x_mean||, attn_v blocks 22-29), computed in numpy from the
cached hidden states exactly as study_accuracy.py does (it reproduces the runtime's choices; the runtime's
softmax weights are checked against a numpy reference by tests/test_mixture_weights.py). Every mixture is
generated (greedy, the task's max_tokens, as measure.py) with the runtime; halves as study_accuracy.py (A: the
1st, 3rd, ... prompt of each task). Results are kept per (pool, k, weighting, half) in --out as they finish, so
a run that is stopped resumes where it was.
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

GRID = (0.1, 0.25, 0.5, 1.0, 2.0)
POOLS = ("models/pool", "models/pool-alt")
LAYERS = tuple(range(22, 30))


def load_pool(model, pool_dir: Path, cache: Path, nw, eps) -> dict:
    """The default router's calibrated scores z and raw signals of every held-out in-pool prompt, its halves,
    its own adapter's and the k = 1 choice's cached task scores."""
    ip = load_inpool(model, pool_dir, cache)
    manifest, adapters, names, kept, own = ip.manifest, ip.adapters, ip.names, ip.kept, ip.own
    gen = generic_states(model, cache)
    pool = S.Pool([read_adapter(str(p)) for _, p in adapters], ip.ev, gen, nw, eps, modules=("attn_v",))
    z = pool.scores(LAYERS, ("attn_v",), "mean", "sqz")
    # The runtime's raw signal of a calibrated norm router: ||s B A x_mean|| summed over the probed blocks.
    raw = sum(np.sqrt(e) for e in S.block_energies(pool, LAYERS, "ev"))
    k1 = S.gen_scores(pool_dir, kept, adapters, cache)
    order = np.argsort(-np.where(np.isnan(z), -np.inf, z), axis=1, kind="stable")
    return dict(manifest=manifest, adapters=adapters, names=names, kept=kept, own=own, half=ip.half, z=z,
                raw=raw, order=order,
                oracle=np.array([k1[(i, int(o))] for i, o in enumerate(own)]),
                default=np.array([k1[(i, int(order[i, 0]))] for i in range(len(own))]))


def softmax_weights(z_sel: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) over the selected adapters (max subtracted first, as the runtime does)."""
    e = np.exp((z_sel - z_sel.max()) / temperature)
    return e / e.sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop-at", default=None, help="HH:MM (local): start no configuration after this time")
    args = ap.parse_args(argv)
    import logo_cpp
    from logo_cpp import default_model

    mp = str(default_model.base_model_path())
    nw, eps = read_norm_weights(mp), read_rms_eps(mp)
    model = logo_cpp.Model(mp, n_ctx=512, n_threads=args.threads)
    pools = {p: load_pool(model, Path(p), args.cache, nw, eps) for p in POOLS}
    core_pools: dict = {}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("runs", {})
    for name, p in pools.items():
        A, B = p["half"] == 1, p["half"] == 0
        results.setdefault("pools", {})[name] = {
            "prompts": int(len(p["own"])),
            "oracle": {"A": float(p["oracle"][A].mean()), "B": float(p["oracle"][B].mean()), "all": float(p["oracle"].mean())},
            "default_k1": {"A": float(p["default"][A].mean()), "B": float(p["default"][B].mean()),
                           "all": float(p["default"].mean())}}
    score = scorer(None)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    def run(pool_name: str, k: int, weighting: str, half: str) -> float:
        """Task accuracy of the top-k mixtures of one half ("A" / "B") with one weighting ("raw" or a T)."""
        key = f"{pool_name} k={k} {weighting} {half}"
        if key in results["runs"]:
            return results["runs"][key]["accuracy"]
        if args.stop_at and time.strftime("%H:%M") >= args.stop_at:
            raise TimeoutError(key)
        p = pools[pool_name]
        if pool_name not in core_pools:
            core_pools[pool_name] = logo_cpp.AdapterPool(model, [f for _, f in p["adapters"]], names=p["names"])
        rows = np.flatnonzero(p["half"] == (1 if half == "A" else 0))

        def selection(i):
            sel = p["order"][i, :k]
            if weighting == "raw":
                w = p["raw"][i, sel] / p["raw"][i, sel].sum()
            else:
                w = softmax_weights(p["z"][i, sel], float(weighting))
            return [(int(j), float(x)) for j, x in zip(sel, w)]

        t0 = time.perf_counter()
        by_task: dict = {}
        for i in rows:
            by_task.setdefault(p["kept"][i]["task"], []).append(int(i))
        scores = []
        for task, group in by_task.items():
            for s in range(0, len(group), 16):
                g = group[s:s + 16]
                kw = model._sampling_kwargs(max_tokens_for(p["manifest"], task), 0.0, 40, 0.95, 0.05, 0, None, False)
                kw.update(pool=core_pools[pool_name]._core, selections=[selection(i) for i in g])
                outs = model._run([model._prompt_tokens(p["kept"][i]["prompt"]) for i in g], kw)
                scores += [score(task, o.text, p["kept"][i]["answer"]) for i, o in zip(g, outs)]
        acc = float(np.mean(scores))
        results["runs"][key] = {"accuracy": acc, "prompts": len(rows), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{key}: {acc:.3f} ({len(rows)} prompts, {time.perf_counter() - t0:.0f} s)", flush=True)
        save()
        return acc

    save()
    try:
        # The rule, on half A only.
        grid = {t: np.mean([run(pn, 3, str(t), "A") for pn in POOLS]) for t in GRID}
        chosen = max(GRID, key=lambda t: (grid[t], -GRID.index(t)))
        results["rule"] = ("T in GRID with the best mean k=3 accuracy on half A of models/pool and models/pool-alt "
                           "(equal weight per pool; ties: first in grid order)")
        results["grid_mean_A_k3"] = {str(t): float(v) for t, v in grid.items()}
        results["chosen_T"] = chosen
        save()
        print(f"chosen T = {chosen} (mean half-A accuracy at k=3: "
              + ", ".join(f"{t}: {v:.3f}" for t, v in grid.items()) + ")", flush=True)
        for pn in POOLS:
            run(pn, 3, str(chosen), "B")
        for pn in POOLS:
            for half in ("A", "B"):
                run(pn, 5, str(chosen), half)
        for k in (3, 5):
            for pn in POOLS:
                for half in ("A", "B"):
                    run(pn, k, "raw", half)
    except TimeoutError as e:
        print(f"stopped before {e} (--stop-at {args.stop_at}); rerun to resume", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
