"""`logo-cpp eval`: LoGo and baseline routers on the shipped pool's held-out prompts (logo_cpp/evaluation).

Writes eval.json, eval.md and PNG plots to --out and prints the markdown. The default model and pool are the
shipped ones; --model and --pool evaluate another base model or another pool made by models/training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import default_model
from . import router as router_module
from .evaluation.methods import (Method, RouterEntry, SignalSource, arrow_source, baselines, default_calibration,
                                 logo_source)
from .evaluation.report import markdown, plots, summarize
from .evaluation.run import Item, run_comparison

QUICK_PER_TASK = 3
QUICK_KS = (1, 3)
FULL_KS = (1, 3, 5, None)


def parse_ks(text: str) -> tuple[Optional[int], ...]:
    """"1,3,5,all" -> (1, 3, 5, None); ValueError naming the bad entry."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--ks: {part!r} is not a positive integer or 'all'")
    return tuple(out)


# The routers compared, one entry each; every entry is evaluated at each k of --ks. An entry names the signal
# source it probes with (SOURCES: one probe per prompt serves every entry and k that uses the source).
# Raw LoGo is the paper's router. Calibrated LoGo (what logo_cpp.LoGo does by default) ranks by the calibrated
# signal and weights the top k by its softmax at DEFAULT_TEMPERATURE (--mixture-weights signal: by the raw
# signals, the paper's rule); Arrow (Ostapenko et al. 2024) is a data-free routing baseline. Both come with the
# router's calibration support (logo_cpp.router.DEFAULT_CALIBRATION, Arrow).
ROUTERS = [
    RouterEntry("LoGo-norm", source="logo", signal="logo-norm"),
    RouterEntry("LoGo-entropy", source="logo", signal="logo-entropy"),
]
SOURCES = {"logo": logo_source}
_CALIBRATION = default_calibration()
if _CALIBRATION not in (None, "none"):
    # LoGo as users get it at k = 1 (signal "norm", the default) also reranks a close top two at generation
    # (logo_cpp.rerank): one more row, "k=1 + rerank".
    from .rerank import DEFAULT_RERANK_MARGIN

    ROUTERS += [RouterEntry(f"LoGo-{kind} {_CALIBRATION}", source="logo", signal=f"logo-{kind}-{_CALIBRATION}",
                            weighting="softmax", temperature=router_module.DEFAULT_TEMPERATURE, calibrated=True,
                            rerank_margin=DEFAULT_RERANK_MARGIN if kind == "norm" else None)
                for kind in ("norm", "entropy")]
if hasattr(router_module, "Arrow"):
    ROUTERS.append(RouterEntry("Arrow", source="arrow", signal="arrow"))
    SOURCES["arrow"] = arrow_source


def with_mixture_weights(routers: Sequence[RouterEntry], weights: Optional[str],
                         temperature: Optional[float]) -> list[RouterEntry]:
    """The calibrated LoGo entries weighted as --mixture-weights / --mixture-temperature say (None: LoGo's
    default, softmax at DEFAULT_TEMPERATURE); the paper's rows and Arrow are left as they are. ValueError as
    LoGo's for a temperature given with weights "signal"."""
    if weights is None and temperature is None:
        return list(routers)
    weights = weights or "softmax"
    if temperature is not None and weights != "softmax":
        raise ValueError("--mixture-temperature applies to --mixture-weights softmax only")
    out = []
    for r in routers:
        if r.calibrated and weights == "signal":
            r = dataclasses.replace(r, weighting="proportional", weight_signal=f"{r.signal}-raw")
        elif r.calibrated:
            r = dataclasses.replace(r, temperature=r.temperature if temperature is None else temperature)
        out.append(r)
    return out


def pick_routers(text: Optional[str]) -> list[RouterEntry]:
    """The ROUTERS named in ``text`` ("logo-norm,arrow": keys as RouterEntry.key), all of them for None;
    ValueError naming an unknown key and the known ones."""
    if not text:
        return list(ROUTERS)
    known = {r.key: r for r in ROUTERS}
    picked = []
    for part in (p.strip() for p in text.split(",")):
        if part not in known:
            raise ValueError(f"--routers: unknown router {part!r}; use some of {', '.join(known)}")
        picked.append(known[part])
    return list(dict.fromkeys(picked))


def signal_sources(model, pool, routers: Sequence[RouterEntry] = ROUTERS) -> list[SignalSource]:
    """The signal sources the routers need, each built once."""
    return [SOURCES[name](model, pool) for name in dict.fromkeys(r.source for r in routers)]


def methods(ks: Sequence[Optional[int]], routers: Sequence[RouterEntry] = ROUTERS) -> list[Method]:
    """The rows of the results table: the baselines, then every router at every k."""
    return baselines() + [m for router in routers for m in router.methods(ks)]


def load_items(model_pool, manifest: dict, pool_path: Path, per_task: Optional[int],
               only: Optional[Sequence[str]] = None) -> list[Item]:
    """The held-out items to evaluate: the first ``per_task`` of each task (all when None), of the tasks in
    ``only`` (all when None); ValueError for a task name the eval set does not have."""
    from . import tasks

    raw = default_model.read_eval_set(pool_path, manifest)
    known = list(dict.fromkeys(entry["task"] for entry in raw))
    for name in only or ():
        if name not in known:
            raise ValueError(f"--tasks: no task {name!r} in the eval set (have: {', '.join(known)})")
    counts: dict[str, int] = {}
    items = []
    for entry in raw:
        task = entry["task"]
        if (only and task not in only) or (per_task is not None and counts.get(task, 0) >= per_task):
            continue
        counts[task] = counts.get(task, 0) + 1
        own = model_pool.index(task) if task in model_pool else None
        items.append(Item(index=len(items), task=task, prompt=entry["prompt"], answer=entry["answer"], own=own,
                          max_tokens=tasks.get_task(task).max_tokens))
    return items


def run_eval(args) -> int:
    import logo_cpp
    from . import tasks

    base = Path(args.model) if args.model else default_model.base_model_path()
    pool_path = Path(args.pool) if args.pool else default_model.pool_dir()
    manifest = default_model.load_manifest(pool_path)
    adapters = default_model.adapter_files(pool_path, manifest)
    per_task = args.per_task if args.per_task is not None else (QUICK_PER_TASK if args.quick else None)
    if per_task is not None and per_task < 1:
        raise ValueError(f"--per-task must be at least 1, got {per_task}")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    ks = parse_ks(args.ks) if args.ks else (QUICK_KS if args.quick else FULL_KS)
    routers = with_mixture_weights(pick_routers(args.routers), getattr(args, "mixture_weights", None),
                                   getattr(args, "mixture_temperature", None))
    only = None
    if args.tasks is not None:
        only = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not only:
            raise ValueError(f"--tasks names no task ({args.tasks!r}): give comma-separated task names")
    # The output directory is made before the run: an unwritable --out fails now, not after the evaluation.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; the evaluation writes a directory (eval.json, eval.md, plots)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r}: cannot create the directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise PermissionError(f"--out {str(out)!r} is not writable")

    load_before = os.getloadavg()[0]  # the machine's business, for reading the timings
    model = logo_cpp.Model(base, n_ctx=512, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, list(adapters.values()), names=list(adapters))
    items = load_items(pool, manifest, pool_path, per_task, only)
    table = methods(ks, routers)
    run = run_comparison(model, pool, items, signal_sources(model, pool, routers), table, tasks.score,
                         batch=args.batch, seed=args.seed)
    meta = {
        "model": Path(base).name.removesuffix(".gguf"),
        "pool": manifest.get("name", pool_path.name),
        # The manifest lists every adapter's sha256: its own hash identifies the pool's files.
        "pool_manifest_sha256": hashlib.sha256((pool_path / "manifest.json").read_bytes()).hexdigest(),
        "command": " ".join(["logo-cpp", *getattr(args, "argv", ["eval"])]),
        "machine": f"{platform.machine()} with {os.cpu_count()} cores, {model.n_threads} threads, {model.device}, "
                   f"load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after",
        "per_task": per_task,
    }
    report = summarize(run, table, meta)
    import json

    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, plots(report, out))
    (out / "eval.md").write_text(text)
    sys.stdout.write(text)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--model", "-m", default=None, help="base model GGUF (default: the shipped SmolLM2-135M-Instruct)")
    p.add_argument("--pool", type=Path, default=None,
                   help="an adapter pool directory with manifest.json, eval.jsonl and adapters/ (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("logo-cpp-eval"),
                   help="where eval.json, eval.md and the plots go (default ./logo-cpp-eval)")
    p.add_argument("--per-task", type=int, default=None,
                   help=f"held-out prompts per task (default: all; --quick: {QUICK_PER_TASK})")
    p.add_argument("--tasks", default=None, help="evaluate only these tasks (comma-separated names; default: all)")
    p.add_argument("--ks", default=None, help="k values for the signal routers, e.g. 1,3,5,all "
                   f"(default {','.join('all' if k is None else str(k) for k in FULL_KS)}; --quick: "
                   f"{','.join(map(str, QUICK_KS))})")
    p.add_argument("--routers", default=None,
                   help=f"compare only these routers (comma-separated; default all: {','.join(r.key for r in ROUTERS)}); "
                   "the base model, the oracle, the uniform merge and random-k are always in")
    from .cli import add_cache_args, add_mixture_weight_args, seed, thread_count

    add_mixture_weight_args(p)
    add_cache_args(p)
    p.add_argument("--batch", type=int, default=16, help="sequences decoded together per graph evaluation")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random-k baseline, in [0, 2**64) (default 0)")
    p.add_argument("--threads", "-t", type=thread_count, default=None)
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke test: {QUICK_PER_TASK} prompts per task, k in {QUICK_KS}")
