"""A cheap routability check of a pool: does LoGo's signal rank each prompt's own adapter first?

    python -m models.training.routing_check --pool models/pool [--per-task 12] [--signal norm]

Runs ``logo_cpp.LoGo`` (probe="base", the paper's last-block attn_q signal) over the first ``per_task`` held-out
raw prompts of every in-pool task and reports the fraction whose own adapter has the largest signal:
- raw: the paper's signal as is;
- z-scored: each adapter's signal standardised by its mean and std over all the prompts of this check
  (label-free, but computed on the evaluation prompts themselves: an upper bound for calibrations that use
  other unlabeled prompts; calibrated routing proper is issue #11's job, not this script's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from logo_cpp import tasks as task_meta


def signal_matrix(pool_dir: Path, per_task: int, signal: str, threads: int = 1):
    """(signals (n_prompts, n_adapters) float64, own adapter index per prompt, adapter names)."""
    import logo_cpp

    from .hf_base import base_gguf_path

    items = [it for t in task_meta.IN_POOL
             for it in task_meta.load_eval(pool_dir / "eval.jsonl", [t])[:per_task]]
    model = logo_cpp.Model(str(base_gguf_path()), n_ctx=512, n_threads=threads)
    pool = logo_cpp.AdapterPool(model, [str(pool_dir / "adapters" / f"{t}.gguf") for t in task_meta.IN_POOL])
    router = logo_cpp.LoGo(model, pool, k=1, signal=signal)
    names = list(pool.names)
    rows = [router.route(it["prompt"]).signals for it in items]
    own = [names.index(it["task"]) for it in items]
    return np.array(rows, dtype=np.float64), np.array(own), names


def own_first(signals: np.ndarray, own: np.ndarray) -> float:
    return float((signals.argmax(axis=1) == own).mean())


def report(signals: np.ndarray, own: np.ndarray, names: list[str]) -> dict:
    z = (signals - signals.mean(axis=0)) / (signals.std(axis=0) + 1e-12)
    winners = np.bincount(signals.argmax(axis=1), minlength=len(names))
    return {"n_prompts": int(len(own)), "own_first_raw": own_first(signals, own),
            "own_first_zscored": own_first(z, own), "chance": 1.0 / len(names),
            "raw_most_frequent_winner": names[int(winners.argmax())],
            "raw_most_frequent_winner_share": float(winners.max() / len(own))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=Path("models/pool"))
    ap.add_argument("--per-task", type=int, default=12)
    ap.add_argument("--signal", default="norm", choices=("norm", "entropy"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    signals, own, names = signal_matrix(args.pool, args.per_task, args.signal, args.threads)
    result = report(signals, own, names)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
