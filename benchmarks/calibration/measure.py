"""Routing quality of the runtime's own routers on a pool, by the paper's protocol (held-out raw prompts, k = 1).

    python benchmarks/calibration/measure.py --pool-dir models/pool --out docs/calibration/pool.json --threads 1

For every candidate router (LoGo with a calibration, probe position and probed blocks; Arrow), every prompt of the
pool's eval.jsonl is routed through the runtime (``logo_cpp.LoGo`` / ``logo_cpp.Arrow``, k = 1). Reported per
candidate: in pool, how often the prompt's own adapter is ranked first and the task accuracy of the k = 1 choice
next to the oracle's (each prompt's own adapter); out of pool, accuracy next to the base model's.

A k = 1 LoGo mixture is the chosen adapter alone at weight 1 (weights are the selected raw signals normalised),
so each (prompt, adapter) generation is made once, greedily up to the task's max_tokens as ``logo-cpp eval``
runs it, and cached on disk (by prompt and adapter file content): candidates that agree cost nothing more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from correctness import max_tokens_for, scorer  # noqa: E402
from explore import pool_adapters  # noqa: E402
from probe_data import load_pool_dir, read_adapter  # noqa: E402

BATCH = 16


def candidates(adapted: list[int]) -> dict:
    """label -> (router class name, kwargs) for the measured routers. ``adapted``: the blocks the pool adapts."""
    span = adapted  # every adapted block
    top4 = adapted[-4:]
    q = dict(layer=-1, module="attn_q")  # the paper's probe site (LoGo's defaults follow the calibration)
    return {
        "default (zscore_sq mean, last 8 blocks, attn_v)": ("LoGo", dict()),
        "none (paper)": ("LoGo", dict(calibration="none", position="last")),
        "spectral": ("LoGo", dict(calibration="spectral", position="last", **q)),
        "frobenius": ("LoGo", dict(calibration="frobenius", position="last", **q)),
        "zscore last": ("LoGo", dict(calibration="zscore", position="last", **q)),
        "zscore mean": ("LoGo", dict(calibration="zscore", position="mean", **q)),
        "spectral mean": ("LoGo", dict(calibration="spectral", position="mean", **q)),
        "zscore mean, last 8 blocks, attn_v": ("LoGo", dict(calibration="zscore", position="mean")),
        "zscore mean, last 4 blocks": ("LoGo", dict(calibration="zscore", position="mean", layer=top4, module="attn_q")),
        "zscore mean, adapted blocks": ("LoGo", dict(calibration="zscore", position="mean", layer=span, module="attn_q")),
        "zscore mean, adapted blocks, attn_v": ("LoGo", dict(calibration="zscore", position="mean", layer=span,
                                                             module="attn_v")),
        "zscore last, adapted blocks": ("LoGo", dict(calibration="zscore", position="last", layer=span, module="attn_q")),
        "arrow (PEFT)": ("Arrow", dict(calibration="none", position="last")),
        "arrow zscore mean": ("Arrow", dict(calibration="zscore", position="mean")),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Generations:
    """Task scores of (prompt, adapter-or-base) pairs, made on demand and cached in one JSON file."""

    def __init__(self, model, pool, files: list[Path], path: Path, score, manifest: dict):
        self.model, self.pool, self.path, self.score, self.manifest = model, pool, path, score, manifest
        self.file_keys = [sha(Path(f).read_bytes()) for f in files]
        self.cache = json.loads(path.read_text()) if path.exists() else {}

    def key(self, item: dict, j: int) -> str:
        return sha((item["prompt"] + "\0" + item["task"]).encode()) + ":" + ("base" if j < 0 else self.file_keys[j])

    def need(self, pairs: set) -> None:
        """Generates every (item index, adapter index or -1 for the base) pair not cached yet."""
        todo = sorted(pairs, key=lambda p: (self.items[p[0]]["task"], p[1] < 0, p))
        todo = [p for p in todo if self.key(self.items[p[0]], p[1]) not in self.cache]
        t0 = time.perf_counter()
        done = 0
        while todo:
            task, base = self.items[todo[0][0]]["task"], todo[0][1] < 0
            group = [p for p in todo if self.items[p[0]]["task"] == task and (p[1] < 0) == base][:BATCH]
            todo = [p for p in todo if p not in group]
            kw = self.model._sampling_kwargs(max_tokens_for(self.manifest, task), 0.0, 40, 0.95, 0.05, 0, None, False)
            if not base:
                kw.update(pool=self.pool._core, selections=[[(j, 1.0)] for _, j in group])
            outs = self.model._run([self.model._prompt_tokens(self.items[i]["prompt"]) for i, _ in group], kw)
            for (i, j), o in zip(group, outs):
                self.cache[self.key(self.items[i], j)] = self.score(task, o.text, self.items[i]["answer"])
            done += len(group)
            if done % 160 < BATCH:
                print(f"  generated {done} ({time.perf_counter() - t0:.0f} s, {len(todo)} left)", flush=True)
                self.path.write_text(json.dumps(self.cache))
        self.path.write_text(json.dumps(self.cache))

    def get(self, i: int, j: int) -> float:
        return float(self.cache[self.key(self.items[i], j)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-dir", type=Path, required=True)
    ap.add_argument("--model", default=None, help="base GGUF (default: logo_cpp.default_model)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON report")
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks-py", default=None, help="a tasks.py with score() (default: logo_cpp.tasks)")
    ap.add_argument("--only", nargs="*", default=None, help="measure only these candidate labels")
    ap.add_argument("--per-task", type=int, default=0, help="the first N eval items of each task (0: all)")
    ap.add_argument("--no-accuracy", action="store_true", help="routing only (no generation)")
    ap.add_argument("--accuracy-for", nargs="*", default=None,
                    help="generate (and report task accuracy) only for these candidate labels (default: all)")
    ap.add_argument("--no-base-in-pool", action="store_true",
                    help="skip the base model on in-pool prompts (out of pool it is always generated)")
    args = ap.parse_args(argv)

    import logo_cpp

    if args.model is None:
        from logo_cpp import default_model

        args.model = str(default_model.base_model_path())
    manifest, items = load_pool_dir(args.pool_dir)
    if args.per_task:
        seen: dict = {}
        items = [it for it in items if seen.setdefault(it["task"], []).append(it) or len(seen[it["task"]]) <= args.per_task]
    adapters = pool_adapters(args.pool_dir, manifest)
    names, files = [n for n, _ in adapters], [p for _, p in adapters]
    model = logo_cpp.Model(args.model, n_ctx=512, n_threads=args.threads)
    t0 = time.perf_counter()
    pool = logo_cpp.AdapterPool(model, files, names=names)
    load_s = time.perf_counter() - t0
    adapted = sorted({l for f in files for (l, m) in read_adapter(str(f)) if m == "attn_q"})
    own = np.array([names.index(it["task"]) if it["task"] in names else -1 for it in items])
    in_pool = own >= 0
    print(f"{len(names)} adapters (blocks {adapted[0]}..{adapted[-1]}), {in_pool.sum()} in-pool and "
          f"{(~in_pool).sum()} out-of-pool prompts", flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    gens = Generations(model, pool, files, args.cache / f"generations-{sha(str(args.pool_dir.resolve()).encode())}.json",
                       scorer(args.tasks_py), manifest)
    gens.items = items
    routes_path = args.cache / f"routes-{sha(b''.join(Path(f).read_bytes() for f in files))}-{len(items)}.json"
    routes = json.loads(routes_path.read_text()) if routes_path.exists() else {}

    grid = candidates(adapted)
    if args.only:
        grid = {k: v for k, v in grid.items() if k in args.only}
    for label, (cls, kw) in grid.items():
        if label in routes and routes[label]["kwargs"] == json.loads(json.dumps(kw)):
            continue  # routed before with the same arguments (and the same defaults: see the commit)
        t0 = time.perf_counter()
        router = getattr(logo_cpp, cls)(model, pool, k=1, **kw)
        chosen, probe_s, first_cal = [], [], None
        for it in items:
            r = router.route(it["prompt"])
            chosen.append(int(r.indices[0]))
            probe_s.append(r.timings["probe_seconds"])
            if first_cal is None:
                first_cal = r.timings["calibration_seconds"]
                meta = dict(calibration=r.calibration, position=r.position, layers=r.layers, module=r.module)
        routes[label] = dict(router=cls, kwargs={k: v for k, v in kw.items()}, chosen=chosen, **meta,
                             probe_median_s=float(np.median(probe_s)), first_calibration_s=first_cal)
        routes_path.write_text(json.dumps(routes))
        own_first = np.mean(np.array(chosen)[in_pool] == own[in_pool])
        print(f"  routed {label:<40} own-first {own_first:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    report = {"pool_dir": str(args.pool_dir), "recipe": manifest.get("recipe"), "model": Path(args.model).name,
              "adapters": names, "adapted_blocks": adapted, "n_in_pool": int(in_pool.sum()),
              "n_out_of_pool": int((~in_pool).sum()), "pool_load_seconds": load_s, "candidates": {}}
    if not args.no_accuracy:
        accuracy_for = [l for l in grid if args.accuracy_for is None or l in args.accuracy_for]
        base_rows = np.flatnonzero(~in_pool) if args.no_base_in_pool else range(len(items))
        pairs = {(i, int(own[i])) for i in np.flatnonzero(in_pool)} | {(i, -1) for i in base_rows}
        for label in accuracy_for:
            pairs |= {(i, c) for i, c in enumerate(routes[label]["chosen"])}
        gens.need(pairs)
        report["oracle_accuracy"] = float(np.mean([gens.get(i, int(own[i])) for i in np.flatnonzero(in_pool)]))
        if not args.no_base_in_pool:
            report["base_accuracy_in_pool"] = float(np.mean([gens.get(i, -1) for i in np.flatnonzero(in_pool)]))
        report["base_accuracy_out_of_pool"] = float(np.mean([gens.get(i, -1) for i in np.flatnonzero(~in_pool)]))
    tasks = sorted({it["task"] for it in items})
    for label in grid:
        chosen = np.array(routes[label]["chosen"])
        row = {k: routes[label][k] for k in ("router", "kwargs", "calibration", "position", "layers", "module",
                                               "probe_median_s", "first_calibration_s")}
        row["own_first"] = float(np.mean(chosen[in_pool] == own[in_pool]))
        row["own_first_by_task"] = {t: float(np.mean(chosen[own == names.index(t)] == names.index(t)))
                                    for t in tasks if t in names}
        counts = np.bincount(chosen[in_pool], minlength=len(names))
        row["most_chosen"], row["most_chosen_share"] = names[int(counts.argmax())], float(counts.max() / in_pool.sum())
        if not args.no_accuracy and label in accuracy_for:
            row["accuracy_in_pool"] = float(np.mean([gens.get(i, int(chosen[i])) for i in np.flatnonzero(in_pool)]))
            row["accuracy_out_of_pool"] = float(np.mean([gens.get(i, int(chosen[i])) for i in np.flatnonzero(~in_pool)]))
            row["accuracy_by_task"] = {t: float(np.mean([gens.get(i, int(chosen[i])) for i, it in enumerate(items)
                                                         if it["task"] == t])) for t in tasks}
        report["candidates"][label] = row
    if not args.no_accuracy:
        report["base_by_task"] = {t: float(np.mean([gens.get(i, -1) for i, it in enumerate(items) if it["task"] == t]))
                                  for t in tasks if t not in names or not args.no_base_in_pool}
        report["oracle_by_task"] = {t: float(np.mean([gens.get(i, int(own[i])) for i, it in enumerate(items)
                                                      if it["task"] == t])) for t in tasks if t in names}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    print(f"\n{'router (k=1)':<40} own-first  acc in pool  acc out of pool")
    if not args.no_accuracy:
        print(f"{'oracle (own adapter)':<40} {'':9}  {report['oracle_accuracy']:.3f}")
        print(f"{'base model':<40} {'':9}  {report.get('base_accuracy_in_pool', float('nan')):.3f}        "
              f"{report['base_accuracy_out_of_pool']:.3f}")
    for label, row in report["candidates"].items():
        acc = "" if "accuracy_in_pool" not in row else f"  {row['accuracy_in_pool']:.3f}        {row['accuracy_out_of_pool']:.3f}"
        print(f"{label:<40} {row['own_first']:.3f}    {acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
