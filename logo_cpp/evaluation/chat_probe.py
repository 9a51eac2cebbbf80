"""What should the router read on a chat turn? Measured on the held-out set through the chat template.

    python -m logo_cpp.evaluation.chat_probe --out docs/eval            # chat_probe.md and chat_probe.json

A chat request holds a conversation, not the raw "instruction + input + Answer:" prompt the LoGo paper probes.
Candidates for the probe input of a turn whose user message is ``text``:
- "raw prompt": text + "\\nAnswer:", the paper's input (what `logo-cpp eval` probes; the reference);
- "message": the last user message as raw text;
- "templated turn": the chat template over that one message, up to the assistant's turn;
- "templated conversation": the chat template over an earlier exchange (a prompt of another task and its
  answer) and this message: what a server sees on a second turn. ("message" does not change with history.)
For every signal source of `logo-cpp eval` this reports how often the prompt's own adapter ranks first and in
the top 3, and the task accuracy of answers generated through the chat template with LoGo (k = the chat's
default) routed on each input, beside the base model and the own adapter in the same chat format.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .methods import top_k
from .run import Item, _key, generate_all

INPUTS = ("raw prompt", "message", "templated turn", "templated conversation")


def _previous(items: Sequence[dict], i: int) -> dict:
    """A fixed earlier exchange for item i: the next held-out item of another task, with its answer."""
    n = len(items)
    for step in range(1, n):
        other = items[(i + 7 * step) % n]
        if other["task"] != items[i]["task"]:
            return other
    raise ValueError("the chat probe needs prompts of at least two tasks")


def _user_text(item: dict) -> str:
    messages = item.get("messages")
    if messages:
        return messages[-1]["content"]
    from .. import tasks

    prompt = item["prompt"]
    return prompt[: -len(tasks.RAW_SUFFIX)] if prompt.endswith(tasks.RAW_SUFFIX) else prompt


def probe_inputs(model, items: Sequence[dict]) -> dict[str, list[str]]:
    """The four candidate probe inputs (INPUTS) of every item."""
    out: dict[str, list[str]] = {name: [] for name in INPUTS}
    for i, item in enumerate(items):
        text = _user_text(item)
        prev = _previous(items, i)
        out["raw prompt"].append(item["prompt"])
        out["message"].append(text)
        out["templated turn"].append(model.apply_chat_template([{"role": "user", "content": text}]))
        out["templated conversation"].append(model.apply_chat_template([
            {"role": "user", "content": _user_text(prev)}, {"role": "assistant", "content": prev["answer"]},
            {"role": "user", "content": text}]))
    return out


def run(model, pool, items: list[dict], sources, k: int, score, batch: int = 16) -> dict:
    """Routing accuracy per (input, signal) and chat-format task accuracy per routing input."""
    from ..evaluation.progress import Progress

    inputs = probe_inputs(model, items)
    own = [pool.index(it["task"]) for it in items]
    signals: dict[str, dict[str, np.ndarray]] = {}
    progress = Progress(len(INPUTS) * len(items) * len(sources), "probing chat inputs")
    for name in INPUTS:
        for source in sources:
            for i, text in enumerate(inputs[name]):
                for signal, values in source.score(text).items():
                    signals.setdefault(name, {}).setdefault(signal, np.full((len(items), len(pool)), np.nan))[i] = values
                progress.step()
    routing = {}
    for name in INPUTS:
        for signal, values in signals[name].items():
            ranks = [int(np.sum(np.nan_to_num(values[i], nan=-np.inf) > values[i][own[i]])) for i in range(len(items))]
            routing.setdefault(name, {})[signal] = {"own_first": float(np.mean([r == 0 for r in ranks])),
                                                    "own_in_top3": float(np.mean([r < 3 for r in ranks]))}

    # Answers through the chat template (second turn: the templated conversation), routed on each input.
    from .. import tasks

    chat_items = [Item(i, it["task"], inputs["templated conversation"][i], it["answer"], own[i],
                       tasks.get_task(it["task"]).max_tokens) for i, it in enumerate(items)]
    default_signal = next(iter(signals["message"]))
    plans = {"base model": [None] * len(items), "own adapter": [[(o, 1.0)] for o in own]}
    for name in INPUTS:
        plans[f"LoGo k={k}, routed on the {name}"] = [
            top_k(signals[name][default_signal][i], k) for i in range(len(items))]
    jobs = {(i, _key(sel)): sel for sels in plans.values() for i, sel in enumerate(sels)}
    texts = generate_all(model, pool, jobs, chat_items, batch, label="chat answers")
    task_names = list(dict.fromkeys(it["task"] for it in items))
    accuracy = {}
    for label, sels in plans.items():
        scores = [score(it["task"], texts[(i, _key(sel))], it["answer"]) for i, (it, sel)
                  in enumerate(zip(items, sels))]
        accuracy[label] = float(np.mean([np.mean([s for s, it in zip(scores, items) if it["task"] == t])
                                         for t in task_names]))
    return {"n_prompts": len(items), "n_tasks": len(task_names), "k": k, "signal_for_answers": default_signal,
            "routing_accuracy": routing, "chat_accuracy": accuracy}


def markdown(report: dict) -> str:
    lines = ["# What the router reads on a chat turn", "",
             f"{report['n_prompts']} held-out in-pool prompts of {report['n_tasks']} tasks, {report['model']} with "
             f"{report['n_adapters']} adapters. Made with `{report['command']}`.", "",
             "Own adapter ranked first / in the top 3, by probe input and signal:", ""]
    signal_names = list(next(iter(report["routing_accuracy"].values())))
    lines += ["| probe input | " + " | ".join(signal_names) + " |", "|---|" + "---|" * len(signal_names)]
    for name, per_signal in report["routing_accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{per_signal[s]['own_first']:.3f} / {per_signal[s]['own_in_top3']:.3f}"
                                                   for s in signal_names) + " |")
    lines += ["", f"Task accuracy of second-turn answers through the chat template (greedy; LoGo ranks by "
              f"{report['signal_for_answers']}; mean over tasks):", "", "| answers | accuracy |", "|---|---|"]
    lines += [f"| {label} | {value:.3f} |" for label, value in report["chat_accuracy"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import logo_cpp
    from .. import default_model, tasks
    from ..demo import DEFAULT_K
    from ..evaluate import signal_sources

    p = argparse.ArgumentParser(prog="python -m logo_cpp.evaluation.chat_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("logo-cpp-eval"))
    p.add_argument("--per-task", type=int, default=12, help="held-out prompts per in-pool task (default 12)")
    p.add_argument("--k", type=int, default=DEFAULT_K)
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--pool", type=Path, default=None)
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    pool_path = args.pool or default_model.pool_dir()
    manifest = default_model.load_manifest(pool_path)
    files = default_model.adapter_files(pool_path, manifest)
    base = default_model.base_model_path()
    model = logo_cpp.Model(base, n_ctx=1024, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    counts: dict[str, int] = {}
    items = []
    for it in default_model.read_eval_set(pool_path, manifest):
        if it["task"] in files and counts.get(it["task"], 0) < args.per_task:
            counts[it["task"]] = counts.get(it["task"], 0) + 1
            items.append(it)
    report = run(model, pool, items, signal_sources(model, pool), min(args.k, len(pool)), tasks.score)
    report.update(model=base.stem, n_adapters=len(pool),
                  command=" ".join(["python -m logo_cpp.evaluation.chat_probe", *argv]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chat_probe.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "chat_probe.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
