"""`logo-cpp eval`: how well routing works on the shipped model's held-out mixed-task set.

Exact-match accuracy per task and overall for the base model, the oracle (each prompt's own adapter),
a uniform merge of all adapters, top-1, random-k, LoGo-norm and LoGo-entropy at k = 1, 3 and the
default; routing accuracy (own adapter first, within the top 3); and an out-of-pool protocol (each
prompt routed with its own adapter removed). Writes JSON, a markdown table and PNG plots.

Signals do not depend on the rest of the pool (probe="base"), so one probe per prompt yields every
LoGo variant; removing a prompt's own adapter is masking its signal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .default_model import load_toy_manifest as load_manifest, read_eval_set

BATCH = 16


class Progress:
    """A progress bar on a terminal; one summary line per stage when stderr is a file or a pipe."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.t0 = total, label, 0, time.perf_counter()
        self.live = sys.stderr.isatty()
        self.last_draw = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        finished = self.done >= self.total
        now = time.perf_counter()
        if not finished and (not self.live or now - self.last_draw < 0.1):
            return
        self.last_draw = now
        rate = self.done / max(now - self.t0, 1e-9)
        bar = "#" * int(self.done / max(self.total, 1) * 30)
        prefix = "\r" if self.live else ""
        sys.stderr.write(f"{prefix}{self.label:<22} [{bar:<30}] {self.done}/{self.total} ({rate:.0f}/s)")
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()


def top_k(signals: np.ndarray, k: int, exclude: int = -1):
    s = signals.astype(np.float64).copy()
    s[np.isnan(s)] = -np.inf
    if exclude >= 0:
        s[exclude] = -np.inf
    order = [int(i) for i in np.argsort(-s, kind="stable")[:k] if np.isfinite(s[i])]
    w = np.array([s[i] for i in order])
    return order, (w / w.sum() if w.sum() > 0 else np.full(len(order), 1.0 / len(order)))


def run_eval(args) -> int:
    import logo_cpp

    model_dir, manifest = load_manifest(args.model_dir)
    items = read_eval_set(model_dir, manifest)
    tasks = [t["task"] for t in manifest["tasks"]]
    if args.per_task or args.quick:
        per = args.per_task or 10
        counts: dict[str, int] = {}
        kept = []
        for it in items:
            if counts.get(it["task"], 0) < per:
                counts[it["task"]] = counts.get(it["task"], 0) + 1
                kept.append(it)
        items = kept
    model = logo_cpp.Model(model_dir / manifest["base"]["f16"], n_ctx=256, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, [model_dir / t["adapter"] for t in manifest["tasks"]], names=tasks)
    n = len(pool)
    default_k = min(20, n)
    own = [pool.index(it["task"]) for it in items]

    # One probe per prompt gives both signals for every pool adapter.
    router = logo_cpp.LoGo(model, pool, k=n)
    norms, entropies = np.zeros((len(items), n)), np.zeros((len(items), n))
    progress = Progress(len(items), "probing")
    for i, it in enumerate(items):
        r = router.route(it["prompt"])
        norms[i], entropies[i] = r.norms, r.entropies
        progress.step()
    inv_entropy = 1.0 / (entropies + 1e-6)

    rng = np.random.default_rng(0)
    methods: dict[str, list] = {"base": [None] * len(items),
                                "oracle": [[(own[i], 1.0)] for i in range(len(items))],
                                "uniform": [[(j, 1.0 / n) for j in range(n)]] * len(items)}
    for k in sorted({1, 3, default_k}):
        for name, sig in (("norm", norms), ("entropy", inv_entropy)):
            methods[f"logo-{name} k={k}"] = [list(zip(*top_k(sig[i], k))) for i in range(len(items))]
    methods["top1"] = methods["logo-norm k=1"]
    rk = 3
    methods[f"random k={rk}"] = [[(int(j), 1.0 / rk) for j in sorted(rng.choice(n, rk, replace=False))] for _ in items]
    for name, sig in (("norm", norms), ("entropy", inv_entropy)):
        methods[f"out-of-pool logo-{name} k=3"] = [list(zip(*top_k(sig[i], 3, exclude=own[i]))) for i in range(len(items))]
    methods["out-of-pool top1"] = [list(zip(*top_k(norms[i], 1, exclude=own[i]))) for i in range(len(items))]

    results = {}
    for method, selections in methods.items():
        if method == "top1":
            results[method] = results["logo-norm k=1"]
            continue
        correct = np.zeros(len(items), dtype=bool)
        progress = Progress(len(items), method[:22])
        for start in range(0, len(items), BATCH):
            chunk = list(range(start, min(start + BATCH, len(items))))
            prompts = [model._prompt_tokens(items[i]["prompt"]) for i in chunk]
            kw = model._sampling_kwargs(32, 0.0, 40, 0.95, 0.05, 0, None, False)
            if selections[chunk[0]] is not None:
                kw.update(pool=pool._core, selections=[[(int(j), float(w)) for j, w in selections[i]] for i in chunk])
            outs = model._run(prompts, kw)
            for i, out in zip(chunk, outs):
                correct[i] = out.text.strip() == items[i]["answer"]
            progress.step(len(chunk))
        per_task = {t: float(np.mean([c for c, it in zip(correct, items) if it["task"] == t])) for t in tasks}
        results[method] = {"overall": float(correct.mean()), "per_task": per_task}

    routing = {}
    for name, sig in (("norm", norms), ("entropy", inv_entropy)):
        ranks = [int(np.sum(sig[i] > sig[i][own[i]])) for i in range(len(items))]
        routing[name] = {"own_first": float(np.mean([r == 0 for r in ranks])),
                         "own_in_top3": float(np.mean([r < 3 for r in ranks])),
                         "per_task_own_first": {t: float(np.mean([r == 0 for r, it in zip(ranks, items) if it["task"] == t]))
                                                for t in tasks}}
    heat = {name: [[float(np.mean([sig[i][j] for i in range(len(items)) if items[i]["task"] == t])) for j in range(n)]
                   for t in tasks] for name, sig in (("norm", norms), ("entropy", entropies))}
    report = {"model": manifest["name"], "n_prompts": len(items), "per_task": len(items) // len(tasks),
              "adapters": tasks, "default_k": default_k, "accuracy": results, "routing_accuracy": routing,
              "mean_signal_task_x_adapter": heat}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    pngs = _plots(report, out)
    (out / "eval.md").write_text(_markdown(report, pngs))
    print(_markdown(report, pngs))
    return 0


def _markdown(report: dict, pngs: list[str]) -> str:
    tasks = report["adapters"]
    lines = [f"# Routing on the held-out set ({report['n_prompts']} prompts, {report['per_task']} per task)", "",
             "Exact match, greedy decoding. `out-of-pool`: each prompt routed with its own adapter removed.", "",
             "| method | overall | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for method, r in report["accuracy"].items():
        lines.append(f"| {method} | **{r['overall']:.3f}** | " + " | ".join(f"{r['per_task'][t]:.2f}" for t in tasks) + " |")
    lines += ["", "| routing accuracy | own adapter first | own adapter in top 3 |", "|---|---|---|"]
    for name, r in report["routing_accuracy"].items():
        lines.append(f"| LoGo-{name} | {r['own_first']:.3f} | {r['own_in_top3']:.3f} |")
    lines += [""] + [f"![{p}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def _plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'logo-cpp[bench]'): no plots", file=sys.stderr)
        return []
    methods = list(report["accuracy"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    values = [report["accuracy"][m]["overall"] for m in methods]
    colors = ["tab:gray" if m == "base" else "tab:green" if m == "oracle" else "tab:orange" if "out-of-pool" in m
              else "tab:blue" if m.startswith("logo") or m == "top1" else "tab:purple" for m in methods]
    ax.barh(range(len(methods)), values, color=colors)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("exact-match accuracy (held-out, all tasks)")
    ax.set_title("accuracy by method")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    files = ["accuracy.png"]
    tasks = report["adapters"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, name in zip(axes, ("norm", "entropy")):
        m = np.array(report["mean_signal_task_x_adapter"][name])
        im = ax.imshow(m, cmap="viridis" if name == "norm" else "viridis_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        ax.set_xlabel("adapter")
        ax.set_ylabel("prompt's task")
        ax.set_title(f"mean {'||o||' if name == 'norm' else 'entropy H (lower scores higher)'}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "signals_heatmap.png", dpi=110)
    files.append("signals_heatmap.png")
    plt.close("all")
    return files
