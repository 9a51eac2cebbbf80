"""What should LoGo probe for a chat request: the last user message, or the whole templated prompt?

For every in-pool item of the pool's held-out set (eval.jsonl: "task", "messages", "answer"), LoGo routes on
each candidate probe input; reported per candidate are how often the item's own adapter ranks first and is in
the top 3, and the task score of the chat answer generated with that routing (greedy, k adapters). The raw
completion-style prompt ("prompt", what the paper probes) is shown for reference.

    python benchmarks/chat_routing.py [--pool-dir models/pool] [--k 1] [--per-task N] [--out docs/server]

`logo-cpp serve --chat-route-on` and `logo-cpp chat --route-on` take the winner's name: last-user, or conversation
for "prompt" (the templated conversation; "prompt" is still accepted as its alias).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import logo_cpp
from logo_cpp import _core

CANDIDATES = ("last-user", "prompt", "raw")


def probe_inputs(model, item) -> dict[str, list[int]]:
    messages = item["messages"]
    templated = model.apply_chat_template(messages)
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return {
        "last-user": model.tokenize(last_user, add_special=True, parse_special=False),  # what the server does
        "prompt": model._prompt_tokens(templated),
        "raw": model._prompt_tokens(item["prompt"]),
    }


def generate_all(model, pool, jobs, max_tokens, n_slots=16):
    """Greedy chat answers for (prompt ids, mixture) jobs, decoded together through the server's engine core."""
    batch = _core.ContinuousBatch(model._core, n_ctx=model.n_ctx, n_slots=n_slots)
    out, pending = {}, list(enumerate(jobs))
    while pending or batch.n_active:
        while pending and batch.n_active < batch.n_slots:
            i, (ids, selection) = pending.pop(0)
            event = batch.start(i, ids, max_tokens=max_tokens, temperature=0.0, pool=pool._core if selection else None,
                                selection=selection)
            if event[2]:
                out[i] = event[3]["text"]
        for rid, _, finished, completion, _ in batch.step():
            if finished:
                out[rid] = completion["text"]
    return [out[i].decode("utf-8", errors="replace") for i in range(len(jobs))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="base model (default: the shipped default)")
    p.add_argument("--pool-dir", type=Path, default=Path("models/pool"), help="pool with adapters/ and eval.jsonl")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3], help="adapters per request for the generated answers")
    p.add_argument("--per-task", type=int, default=None, help="items per task (default all)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/server"))
    args = p.parse_args(argv)

    from logo_cpp.server.main import default_model_paths

    base = args.model or default_model_paths()[0]
    model = logo_cpp.Model(base, n_ctx=1024, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, args.pool_dir / "adapters")
    try:
        from logo_cpp.tasks import score
    except ImportError:
        score = None
    items, seen = [], defaultdict(int)
    for line in (args.pool_dir / "eval.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item.get("in_pool") and item["task"] in pool and (args.per_task is None or seen[item["task"]] < args.per_task):
            seen[item["task"]] += 1
            items.append(item)

    # LoGo's defaults (those `logo-cpp serve` routes with), whatever they are on this checkout: the report says
    # which calibration, probe position and site ranked the adapters.
    router = logo_cpp.LoGo(model, pool, k=max(3, *args.k))
    setting = None
    own_first = {c: [] for c in CANDIDATES}  # per item, for paired comparisons of two probe inputs
    item_scores = {}
    first = {c: 0 for c in CANDIDATES}
    top3 = {c: 0 for c in CANDIDATES}
    jobs = {(c, k): [] for c in CANDIDATES for k in args.k}
    t0 = time.perf_counter()
    for item in items:
        inputs = probe_inputs(model, item)
        chat_ids = inputs["prompt"]
        for c in CANDIDATES:
            routing = router.route(inputs[c])
            setting = setting or _setting(routing)
            ranked = routing.names
            first[c] += ranked[0] == item["task"]
            own_first[c].append(ranked[0] == item["task"])
            top3[c] += item["task"] in ranked[:3]
            for k in args.k:
                jobs[c, k].append((chat_ids, list(zip(routing.indices[:k], _renorm(routing.weights[:k])))))
    route_seconds = time.perf_counter() - t0
    print(f"routed {len(items)} items x {len(CANDIDATES)} probe inputs in {route_seconds:.0f} s", file=sys.stderr, flush=True)
    scores = {}
    if score is not None:
        for (c, k), batch_jobs in jobs.items():
            answers = generate_all(model, pool, batch_jobs, args.max_tokens)
            print(f"answers for {c} k={k} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            item_scores[f"{c} k={k}"] = [score(it["task"], a, it["answer"]) for it, a in zip(items, answers)]
            scores[f"{c} k={k}"] = statistics.mean(item_scores[f"{c} k={k}"])
    n = len(items)
    lines = ["# What LoGo probes for a chat request", "",
             f"{Path(base).name}, pool {args.pool_dir} ({len(pool)} adapters), {n} held-out in-pool items "
             f"({len(seen)} tasks). Own adapter ranked first / in the top 3 by LoGo with its defaults ({setting}), "
             f"and the task score of the greedy chat answer with the top-k mixture (weights renormalised to sum 1).",
             "",
             "| probe input | own adapter first | own adapter in top 3 | " +
             " | ".join(f"chat answer score, k={k}" for k in args.k) + " |",
             "|---|---|---|" + "---|" * len(args.k)]
    for c in CANDIDATES:
        cells = [f"{scores[f'{c} k={k}']:.3f}" if f"{c} k={k}" in scores else "n/a" for k in args.k]
        lines.append(f"| {c} | {first[c] / n:.3f} | {top3[c] / n:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"chance: {1 / len(pool):.3f} / {min(3, len(pool)) / len(pool):.3f}; routing took "
              f"{route_seconds:.0f} s for {3 * n} probes.", "", *_paired(own_first, item_scores, min(args.k)), "",
              f"Command: `python benchmarks/chat_routing.py {' '.join(sys.argv[1:])}`", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chat-routing.md").write_text("\n".join(lines))
    (args.out / "chat-routing.json").write_text(json.dumps(
        {"n": n, "ks": args.k, "first": first, "top3": top3, "scores": scores, "pool_size": len(pool),
         "router": setting, "own_first_per_item": own_first, "scores_per_item": item_scores}, indent=2))
    print("\n".join(lines))


def _paired(own_first, item_scores, k) -> list[str]:
    """last-user against prompt item by item (the same items, so the counts of items where only one of them is
    right say more than the difference of two rates): for the own adapter first, and the k-adapter answer."""
    out = []
    for what, a, b in (("own adapter first", own_first["last-user"], own_first["prompt"]),
                       (f"answer right at k={k}", item_scores.get(f"last-user k={k}"), item_scores.get(f"prompt k={k}"))):
        if a is None or b is None:
            continue
        only_a = sum(1 for x, y in zip(a, b) if x and not y)
        only_b = sum(1 for x, y in zip(a, b) if y and not x)
        out.append(f"Paired, {what}: last-user only on {only_a} items, prompt only on {only_b} "
                   f"(exact two-sided sign test p = {_sign_test(only_a, only_b):.2f}).")
    return out


def _sign_test(a: int, b: int) -> float:
    """Two-sided exact binomial test of a successes in a + b trials at p = 1/2 (McNemar's exact test)."""
    from math import comb

    n, low = a + b, min(a, b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(low + 1)) / 2 ** n)


def _setting(routing) -> str:
    """How a Routing ranked: signal, calibration, probe position and site (fields a router may lack say '?')."""
    layers = routing.layers or ([routing.layer] if routing.layer is not None else None)
    site = f"{routing.module or '?'} of block{'s' if layers and len(layers) > 1 else ''} " + (
        f"{layers[0]}-{layers[-1]}" if layers and len(layers) > 1 else f"{layers[0]}" if layers else "?")
    return (f"signal {routing.signal or '?'}, calibration {routing.calibration or 'none'}, position "
            f"{routing.position or 'last'}, probe {site}")


def _renorm(weights):
    total = float(sum(weights))
    return [float(w) / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)



if __name__ == "__main__":
    main()
