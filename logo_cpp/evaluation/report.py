"""The eval's results as a JSON-able dict, a markdown report and PNG plots (matplotlib, when installed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .methods import Method
from .run import SETTINGS, EvalRun


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def summarize(run: EvalRun, methods: Sequence[Method], meta: dict) -> dict:
    """Accuracy per setting, method and task (overall = mean over tasks), routing accuracy per signal, the
    mean signal per task and adapter, and how long each stage took."""
    tasks_of = {s: sorted({it.task for (setting, _), rows in run.outcomes.items() if setting == s for it, _ in rows},
                          key=[it.task for it in run.items].index) for s in SETTINGS}
    accuracy: dict = {}
    for (setting, method), rows in run.outcomes.items():
        per_task = {t: _mean(o.score for it, o in rows if it.task == t) for t in tasks_of[setting]}
        sizes = [0 if o.selection is None else len(o.selection) for _, o in rows]
        accuracy.setdefault(setting, {})[method] = {"overall": _mean(per_task.values()), "per_task": per_task,
                                                    "mean_adapters": _mean(sizes)}
    in_pool = [it for it in run.items if it.own is not None]
    routing = {}
    for name, values in run.signals.items():
        ranks = []
        for it in in_pool:
            s = np.nan_to_num(values[it.index].astype(np.float64), nan=-np.inf)
            ranks.append(int(np.sum(s > s[it.own])))  # adapters strictly ahead of the prompt's own
        tasks = tasks_of["in pool"]
        routing[name] = {
            "own_first": _mean(r == 0 for r in ranks), "own_in_top3": _mean(r < 3 for r in ranks),
            "per_task_own_first": {t: _mean(r == 0 for r, it in zip(ranks, in_pool) if it.task == t) for t in tasks},
        }
    all_tasks = list(dict.fromkeys(it.task for it in run.items))
    heat = {name: [[_mean(values[it.index][j] for it in run.items if it.task == t) for j in range(len(run.adapters))]
                   for t in all_tasks] for name, values in run.signals.items()}
    n_adapters = len(run.adapters)
    return {
        **meta,
        "adapters": run.adapters,
        "tasks": {"in_pool": tasks_of["in pool"], "out_of_pool": tasks_of["out of pool"], "all": all_tasks},
        "n_prompts": {s: len({it.index for (setting, _), rows in run.outcomes.items() if setting == s for it, _ in rows})
                      for s in SETTINGS},
        "methods": [{"name": m.name, "kind": m.kind, "signal": m.signal, "k": m.k, "weighting": m.weighting,
                     "rerank_margin": m.rerank_margin}
                    for m in methods],
        "accuracy": accuracy,
        "routing_accuracy": routing,
        "chance": {"own_first": 1 / n_adapters, "own_in_top3": min(3, n_adapters) / n_adapters},
        "mean_signal_task_x_adapter": heat,
        "timings": {"probe_seconds": run.seconds.get("probe"), "generate_seconds": run.seconds.get("generate"),
                    "rerank_seconds": run.seconds.get("rerank"), "distinct_generations": run.n_generated},
    }


def _cell(value: Optional[float]) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def markdown(report: dict, plots: Sequence[str]) -> str:
    acc, methods = report["accuracy"], [m["name"] for m in report["methods"]]
    settings = [s for s in SETTINGS if s in acc]
    n = report["n_prompts"]
    lines = [f"# LoGo and baseline routers on {report['model']} with {len(report['adapters'])} task adapters", "",
             f"Held-out prompts (never seen in training), greedy decoding, each task's metric "
             f"(`logo_cpp.tasks.score`); \"overall\" is the mean over tasks. Settings: **in pool** "
             f"({n['in pool']} prompts of {len(report['tasks']['in_pool'])} tasks, routed over the whole pool); "
             f"**own adapter removed** (the same prompts, each routed with its own task's adapter taken out, as "
             f"LoraRetriever evaluates); **out of pool** ({n['out of pool']} prompts of "
             f"{len(report['tasks']['out_of_pool'])} tasks that have no adapter).", "",
             f"Made with `{report['command']}` (pool manifest sha256 {report.get('pool_manifest_sha256', '-')}).", "",
             "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_cell(acc[s].get(m, {}).get("overall")) for s in settings) + " |")
    chance = report["chance"]
    lines += ["", "Routing accuracy on in-pool prompts (is the prompt's own adapter ranked first, or in the top 3?):", "",
              "| signal | own adapter first | own adapter in top 3 |", "|---|---|---|"]
    for name, r in report["routing_accuracy"].items():
        lines.append(f"| {name} | {r['own_first']:.3f} | {r['own_in_top3']:.3f} |")
    lines.append(f"| chance ({len(report['adapters'])} adapters) | {chance['own_first']:.3f} | {chance['own_in_top3']:.3f} |")
    for s in settings:
        tasks = report["tasks"]["in_pool" if s != "out of pool" else "out_of_pool"]
        shown = [m for m in methods if m in acc[s]]
        lines += ["", f"## {s}: per task", "", "| task | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for t in tasks:
            lines.append(f"| {t} | " + " | ".join(_cell(acc[s][m]["per_task"].get(t)) for m in shown) + " |")
    routing = report["routing_accuracy"]
    if routing:
        names = list(routing)
        lines += ["", "## Own adapter ranked first, per task", "", "| task | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for t in report["tasks"]["in_pool"]:
            lines.append(f"| {t} | " + " | ".join(_cell(routing[s]["per_task_own_first"].get(t)) for s in names) + " |")
    t = report["timings"]
    rerank = (f", the rerank's candidate answers {t['rerank_seconds']:.0f} s"
              if t.get("rerank_seconds") is not None else "")
    lines += ["", f"Probing took {t['probe_seconds']:.0f} s, generation {t['generate_seconds']:.0f} s{rerank} "
              f"({t['distinct_generations']} distinct prompt-and-mixture generations; a mixture shared by several "
              f"methods runs once) on {report['machine']}.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[str]:
    """accuracy.png (methods x settings) and signals_heatmap.png (mean signal per task and adapter, raw and
    z-scored per adapter over all prompts); [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plots", file=sys.stderr)
        return []
    acc = report["accuracy"]
    settings = [s for s in SETTINGS if s in acc]
    methods = [m["name"] for m in report["methods"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(methods) + 1.5))
    height = 0.8 / len(settings)
    for j, s in enumerate(settings):
        values = [acc[s].get(m, {}).get("overall", np.nan) for m in methods]
        ax.barh(np.arange(len(methods)) + j * height, values, height=height, label=s)
    ax.set_yticks(np.arange(len(methods)) + 0.4 - height / 2, methods, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (mean over tasks, held-out prompts)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{report['model']}: routers by setting")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    files = ["accuracy.png"]

    heat = report["mean_signal_task_x_adapter"]
    if heat:
        tasks, adapters = report["tasks"]["all"], report["adapters"]
        fig, axes = plt.subplots(len(heat), 2, figsize=(14, 5.5 * len(heat)), squeeze=False)
        for row, (name, values) in zip(axes, heat.items()):
            m = np.array(values, dtype=np.float64)
            z = (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-12)
            for ax, data, title in ((row[0], m, f"{name}: mean signal"),
                                    (row[1], z, f"{name}: z-scored per adapter (column)")):
                im = ax.imshow(data, cmap="viridis", aspect="auto")
                ax.set_xticks(range(len(adapters)), adapters, rotation=70, ha="right", fontsize=7)
                ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
                ax.set_xlabel("adapter")
                ax.set_ylabel("prompt's task")
                ax.set_title(title, fontsize=9)
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(out / "signals_heatmap.png", dpi=100)
        files.append("signals_heatmap.png")
    plt.close("all")
    return files
