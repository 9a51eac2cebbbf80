"""Task score of every evaluation prompt with the base model and with each pool adapter alone (weight 1).

With this table, the task accuracy of any k = 1 router is a lookup: score[p, chosen adapter]. The oracle is
score[p, own adapter]; out of pool is the router's choice with the own adapter excluded (or, for tasks that
have no adapter, among all). Generation is greedy, raw prompts, as `logo-cpp eval` runs it.

    python benchmarks/calibration/correctness.py --pool-dir models/pool --model <base.gguf>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explore import pool_adapters  # noqa: E402
from probe_data import _key, load_pool_dir  # noqa: E402

BATCH = 16


def scorer(tasks_py: str | None = None):
    """The pool's task metric: logo_cpp.tasks.score, or the score() of the file ``tasks_py``."""
    if tasks_py:
        import importlib.util

        spec = importlib.util.spec_from_file_location("pool_tasks", tasks_py)
        module = importlib.util.module_from_spec(spec)
        sys.modules["pool_tasks"] = module
        spec.loader.exec_module(module)
        return module.score
    from logo_cpp.tasks import score

    return score


def max_tokens_for(manifest: dict, task: str) -> int:
    for t in manifest.get("tasks", []):
        if (t.get("task") or t.get("name")) == task and t.get("max_tokens"):
            return int(t["max_tokens"])
    return 32


def _file_key(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def table(model, pool, items: list[dict], manifest: dict, cache_dir: Path, score, files: list[Path]) -> np.ndarray:
    """(P, N + 1) scores: column j < N is pool adapter j alone (file files[j]), column N the base model.
    Each column is cached on its own (by adapter file content and prompts), so a grown pool costs one column."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    prompts_key = _key(model.path, [it["prompt"] for it in items])
    n = len(pool)
    out = np.zeros((len(items), n + 1))
    t0 = time.perf_counter()
    for j in range(n + 1):
        label = "base" if j == n else pool.names[j]
        path = cache_dir / f"scores-{prompts_key}-{'base' if j == n else _file_key(files[j])}.npy"
        if path.exists():
            out[:, j] = np.load(path)
            continue
        column = np.zeros(len(items))
        order = sorted(range(len(items)), key=lambda i: items[i]["task"])  # one max_tokens per batch
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            for task in sorted({items[i]["task"] for i in chunk}):
                group = [i for i in chunk if items[i]["task"] == task]
                kw = model._sampling_kwargs(max_tokens_for(manifest, task), 0.0, 40, 0.95, 0.05, 0, None, False)
                if j != n:
                    kw.update(pool=pool._core, selections=[[(j, 1.0)] for _ in group])
                outs = model._run([model._prompt_tokens(items[i]["prompt"]) for i in group], kw)
                for i, o in zip(group, outs):
                    column[i] = score(task, o.text, items[i]["answer"])
        np.save(path, column)
        out[:, j] = column
        print(f"  scores: {label} {column.mean():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-dir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks-py", default=None, help="a tasks.py with score() (default: logo_cpp.tasks)")
    args = ap.parse_args(argv)

    import logo_cpp

    manifest, items = load_pool_dir(args.pool_dir)
    adapters = pool_adapters(args.pool_dir, manifest)
    model = logo_cpp.Model(args.model, n_ctx=512, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, [p for _, p in adapters], names=[n for n, _ in adapters])
    scores = table(model, pool, items, manifest, args.cache, scorer(args.tasks_py), [p for _, p in adapters])
    names = pool.names
    in_pool = np.array([it["task"] in names for it in items])
    own = np.array([names.index(it["task"]) if it["task"] in names else -1 for it in items])
    print(f"base {scores[:, -1].mean():.3f}; oracle (in pool) {scores[in_pool, own[in_pool]].mean():.3f}")
    for task in dict.fromkeys(it["task"] for it in items):
        rows = np.array([it["task"] == task for it in items])
        best = scores[rows, :-1].mean(axis=0)
        print(f"  {task:<20} base {scores[rows, -1].mean():.2f}  own {best[names.index(task)] if task in names else float('nan'):.2f}"
              f"  best other {names[int(np.argmax(np.where(np.arange(len(names)) == (names.index(task) if task in names else -1), -1, best)))]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
