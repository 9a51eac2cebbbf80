"""One-shot `logo-cpp route` on the shipped model and pool: a cold calibration disk cache (an empty directory),
a warm one (the statistics the previous run saved), and no disk cache (--no-cache, what every process paid
before the cache), alternating, each a fresh process timed from start to exit. Records medians of the wall
times and of the routes' own calibration_seconds, and checks that every run printed the same routing.

    python benchmarks/calibration_cache_bench.py --reps 3 --out docs/calibration/disk-cache-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Give the plural form of crisis.\nAnswer:"


def one_shot(cache_args: list[str], threads) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "logo_cpp.cli", "route", "-p", PROMPT, "--k", "3", "--all", "--json", *cache_args]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return wall, json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="route --threads (default: the CLI's, one per core)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="logo-cpp-cache-bench-"))
    runs: dict[str, list] = {"no cache": [], "cold": [], "warm": []}
    outputs = []
    try:
        for rep in range(args.reps):
            directory = root / f"rep{rep}"
            for kind, cache_args in (("no cache", ["--no-cache"]), ("cold", ["--cache-dir", str(directory)]),
                                     ("warm", ["--cache-dir", str(directory)])):
                wall, out = one_shot(cache_args, args.threads)
                runs[kind].append({"wall_seconds": wall, "calibration_seconds": out["timings"]["calibration_seconds"],
                                   "probe_seconds": out["timings"]["probe_seconds"]})
                outputs.append({k: v for k, v in out.items() if k != "timings"})
                print(f"rep {rep + 1} {kind:>8}: {wall:6.2f} s wall, calibration {out['timings']['calibration_seconds']:.4f} s",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    same = all(o == outputs[0] for o in outputs)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_seconds", "calibration_seconds", "probe_seconds")}
           for k, v in runs.items()}
    report = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "prompt": PROMPT,
              "threads": args.threads or "one per core", "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "same_routing_in_every_run": same, "medians": med, "runs": runs}
    print(json.dumps(report["medians"], indent=2))
    print(f"same routing in every run: {same}; load {report['load_before_after']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
