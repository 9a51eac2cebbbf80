"""Makes a whole adapter pool: held-out set, one adapter per in-pool task, llama.cpp accuracies, manifest.

    python -m models.training.make_pool --recipe final --seed 0 --out models/pool --peft sentiment
    python -m models.training.make_pool --recipe alt --seed 0 --out models/pool-alt

Each adapter trains in its own process under the shared heavy-job lock (``flock /work/locks/heavy.lock``,
one adapter per acquisition, so that other jobs interleave; ``--lock ''`` runs without it). Then every
adapter is evaluated through llama-cpp-python (base vs own adapter, raw and chat prompts) and
``manifest.json`` records the base file (name, package, sha256), recipe, seed, command, tasks with their
templates and metrics, adapter files with sha256, accuracies, the disjointness check and the timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from logo_cpp import tasks as task_meta

from . import dataset
from .generators import GENERATORS, HELDOUT_PERCENT
from .hf_base import BASE_FILE, BASE_PACKAGE, base_gguf_path
from .recipes import get_recipe
from .train import BUILD

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LOCK = "/work/locks/heavy.lock"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_eval(out: Path) -> list[dict]:
    items = dataset.eval_set()
    with open(out / "eval.jsonl", "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return items


def check_split(items: list[dict], seed: int, n_train: int = 5000) -> dict:
    """Draws n_train training examples per in-pool task and asserts none is held out (dataset.check_disjoint)."""
    report = {}
    for task in task_meta.IN_POOL:
        heldout = {it["messages"][0]["content"] for it in items if it["task"] == task}
        report[task] = {"train_draws": n_train, "distinct_train_prompts": dataset.check_disjoint(task, seed, n_train, heldout),
                        "heldout_prompts": len(heldout), "overlap": 0}
    return report


def run(cmd: list[str], lock: str) -> float:
    if lock:
        cmd = ["flock", lock] + cmd
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="final")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("models/pool"))
    ap.add_argument("--tasks", default=None, help="comma-separated subset to (re)train (default: all in pool)")
    ap.add_argument("--peft", default="", help="comma-separated tasks whose PEFT directory is copied to out/peft/")
    ap.add_argument("--skip-train", action="store_true", help="reuse the adapters already in out/adapters")
    ap.add_argument("--manifest-only", action="store_true",
                    help="rewrite manifest.json from the adapters, logs and accuracy.json already made (keeps the "
                         "recorded command and wall times of the run that made them)")
    ap.add_argument("--eval-per-task", type=int, default=None, help="llama.cpp accuracy on the first N items")
    ap.add_argument("--lock", default=DEFAULT_LOCK, help="flock file for each training/eval process ('' for none)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--eval-threads", type=int, default=1, help="llama.cpp threads for the accuracy table")
    args = ap.parse_args()
    recipe = get_recipe(args.recipe)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pool_name = out.name
    command = "python -m models.training.make_pool " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    items = write_eval(out)
    split = check_split(items, args.seed)
    print(f"eval.jsonl: {len(items)} items; training never drew a held-out input (5000 draws per task)")

    train_tasks = args.tasks.split(",") if args.tasks else list(task_meta.IN_POOL)
    seconds = {}
    if args.manifest_only:
        previous = json.loads((out / "manifest.json").read_text())
        command, seconds = previous["command"], previous["seconds"]
    elif not args.skip_train:
        for task in train_tasks:
            seconds[task] = round(run([sys.executable, "-m", "models.training.train", "--task", task, "--recipe",
                                       recipe.name, "--seed", str(args.seed), "--out", str(out), "--pool-name",
                                       pool_name, "--threads", str(args.threads)], args.lock), 1)
    for task in filter(None, args.peft.split(",")):
        src, dst = BUILD / pool_name / "peft" / task, out / "peft" / task
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(src / name, dst / name)

    acc_file = BUILD / pool_name / "accuracy.json"
    eval_cmd = [sys.executable, "-m", "models.training.llamacpp_eval", "--pool", str(out), "--json", str(acc_file),
                "--threads", str(args.eval_threads)]
    if args.eval_per_task:
        eval_cmd += ["--per-task", str(args.eval_per_task)]
    if not args.manifest_only:
        seconds["llama.cpp eval"] = round(run(eval_cmd, args.lock), 1)
    accuracy = json.loads(acc_file.read_text())

    logs = {t: json.loads((BUILD / pool_name / "logs" / f"{t}.json").read_text()) for t in task_meta.IN_POOL
            if (BUILD / pool_name / "logs" / f"{t}.json").exists()}
    tasks = []
    for t in task_meta.TASKS:
        entry = {"name": t.name, "category": t.category, "in_pool": t.in_pool, "metric": t.metric,
                 "max_tokens": t.max_tokens, "description": t.description,
                 "templates": list(GENERATORS[t.name].templates), "adapter": None}
        if t.in_pool:
            path = out / "adapters" / f"{t.name}.gguf"
            entry.update(adapter=f"adapters/{t.name}.gguf", adapter_sha256=sha256(path), adapter_bytes=path.stat().st_size,
                         accuracy=accuracy.get(t.name))
            if t.name in logs:
                entry["steps"] = logs[t.name]["recipe"]["steps"]
                entry["train_seconds"] = logs[t.name]["seconds_train"]
                entry["load_seconds"] = logs[t.name]["seconds_load"]
                entry["cpu_seconds"] = logs[t.name].get("cpu_seconds")
                entry["final_loss"] = logs[t.name]["losses"][-1]
            if (out / "peft" / t.name).is_dir():
                entry["peft"] = f"peft/{t.name}"
        tasks.append(entry)
    base = base_gguf_path()
    manifest = {
        "base": {"file": BASE_FILE, "package": BASE_PACKAGE, "sha256": sha256(base),
                 "hf_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "recipe": recipe.as_dict(),
        "seed": args.seed,
        "command": command,
        "adapter_format": "GGUF LoRA (llama.cpp), F16, general.architecture=llama",
        "prompt_formats": {
            "raw": "prompt = text + '\\nAnswer:'; the adapter answers ' ' + answer + <|im_end|>",
            "chat": "one user message = text, rendered by the model's chat template; answer + <|im_end|>",
        },
        "eval": {"file": "eval.jsonl", "per_task": dataset.EVAL_PER_TASK, "seed": dataset.EVAL_SEED,
                 "heldout_percent": HELDOUT_PERCENT, "n_items": len(items)},
        "split_check": split,
        # wall seconds of each step as run here, lock waits included
        "seconds": seconds,
        # what reproducing costs: the training processes' own time (no lock wait) and the accuracy table
        "cost": {"train_seconds": round(sum(e.get("train_seconds", 0) + e.get("load_seconds", 0) for e in tasks), 1),
                 "train_cpu_seconds": round(sum(e.get("cpu_seconds") or 0 for e in tasks), 1),
                 "train_threads": args.threads, "eval_seconds": seconds.get("llama.cpp eval")},
        "total_adapter_bytes": sum(e.get("adapter_bytes", 0) for e in tasks),
        "tasks": tasks,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out / 'manifest.json'}")


if __name__ == "__main__":
    main()
