"""Recipe measurements: train a few tasks' adapters with one recipe and measure them through llama.cpp.

    python -m models.training.experiment --recipe qv-l18-s90 --tasks parity,animal_class,topic,antonym

Adapters go to ``build/exp/<recipe>/adapters``; accuracies (own adapter, raw and chat, on the first
``--per-task`` held-out items of ``models/pool/eval.jsonl``) and training cost (wall and CPU seconds) to
``build/exp/<recipe>/results.json``. Each process runs under the heavy-job lock, as in ``make_pool``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .make_pool import DEFAULT_LOCK, run
from .recipes import get_recipe
from .train import BUILD

POOL = Path(__file__).resolve().parents[2] / "models" / "pool"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-task", type=int, default=18)
    ap.add_argument("--lock", default=DEFAULT_LOCK)
    args = ap.parse_args()
    recipe = get_recipe(args.recipe)
    tasks = args.tasks.split(",")
    out = BUILD / "exp" / recipe.name
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(POOL / "eval.jsonl", out / "eval.jsonl")
    for task in tasks:
        if not (out / "adapters" / f"{task}.gguf").exists():
            run([sys.executable, "-m", "models.training.train", "--task", task, "--recipe", recipe.name, "--seed",
                 str(args.seed), "--out", str(out), "--pool-name", f"exp-{recipe.name}"], args.lock)
    acc_file = out / "accuracy.json"
    run([sys.executable, "-m", "models.training.llamacpp_eval", "--pool", str(out), "--tasks", ",".join(tasks),
         "--per-task", str(args.per_task), "--json", str(acc_file)], args.lock)
    accuracy = json.loads(acc_file.read_text())
    logs = {t: json.loads((BUILD / f"exp-{recipe.name}" / "logs" / f"{t}.json").read_text()) for t in tasks}
    results = {"recipe": recipe.as_dict(), "per_task": args.per_task, "tasks": {
        t: {"own": accuracy[t]["own"], "base": accuracy[t]["base"], "seconds_train": logs[t]["seconds_train"],
            "cpu_seconds": logs[t].get("cpu_seconds"), "final_loss": logs[t]["losses"][-1],
            "adapter_bytes": (out / "adapters" / f"{t}.gguf").stat().st_size} for t in tasks}}
    for fmt in ("raw", "chat"):
        results[f"mean_own_{fmt}"] = sum(accuracy[t]["own"][fmt] for t in tasks) / len(tasks)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k.startswith("mean")}))


if __name__ == "__main__":
    main()
