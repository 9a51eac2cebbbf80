"""`logo-cpp demo`: LoGo on the shipped default (SmolLM2-135M-Instruct and its task adapters), in the terminal.

Held-out prompts of several tasks, in mixed order; the router is never told the task. Per prompt: the adapters
LoGo chose and their weights, LoGo's answer, the answer of the prompt's own task adapter, the base model's,
whether each is right (the task's metric), and what each stage took.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

DEMO_PROMPTS = 6
# The router setting the demo uses unless told otherwise, as chat and serve: one adapter answered best on both
# shipped pools (docs/eval; logo-cpp eval measures k = 3 and 5 too).
DEFAULT_K = 1


def _style(code: str):
    enabled = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    return (lambda s: f"\033[{code}m{s}\033[0m") if enabled else (lambda s: s)


bold, dim, green, red, cyan = _style("1"), _style("2"), _style("32"), _style("31"), _style("36")


def pick_prompts(items: list[dict], in_pool: set, n: int, seed: int) -> list[dict]:
    """``n`` held-out prompts of ``n`` different in-pool tasks (fewer if the pool has fewer), in random order."""
    rng = random.Random(seed)
    by_task: dict[str, list[dict]] = {}
    for it in items:
        if it["task"] in in_pool:
            by_task.setdefault(it["task"], []).append(it)
    tasks = rng.sample(sorted(by_task), min(n, len(by_task)))
    return [rng.choice(by_task[t]) for t in tasks]


def _tokens(n: int) -> str:
    return f"{n} token{'' if n == 1 else 's'}"


def _one_line(text: str, width: int = 96) -> str:
    text = " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(threads: Optional[int] = None, device: str = "auto", pool_path: Optional[Path] = None,
             k: int = DEFAULT_K, n: int = DEMO_PROMPTS, seed: int = 0) -> int:
    import logo_cpp
    from . import default_model, tasks

    for name, value in (("--k", k), ("--n", n)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    t0 = time.perf_counter()
    base = default_model.base_model_path()
    pool_path = Path(pool_path) if pool_path is not None else default_model.pool_dir()
    manifest = default_model.load_manifest(pool_path)
    files = default_model.adapter_files(pool_path, manifest)
    model = logo_cpp.Model(base, n_ctx=512, device=device, n_threads=threads)
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    router = logo_cpp.LoGo(model, pool, k=min(k, len(pool)))
    prompts = pick_prompts(default_model.read_eval_set(pool_path, manifest), set(files), n, seed)
    load_s = time.perf_counter() - t0

    print(bold("logo-cpp demo") + dim(f"  {base.stem} on {model.device} ({model.n_threads} thread{'s' if model.n_threads != 1 else ''}) · "
                                      f"{len(pool)} task adapters ({pool.nbytes / 2**20:.0f} MiB) · LoGo k={router.k}, "
                                      f"signal {router.signal}"
                                      + (f" ({router.calibration})" if getattr(router, "calibration", "none") != "none" else "")))
    print(dim(f"loaded in {load_s:.1f} s. {len(prompts)} held-out prompts of different tasks; the router is not "
              f"told the task: it picks adapters from the prompt alone.\n"))
    right = {"logo": 0, "own": 0, "base": 0}
    probe_ms, prefill_ms = [], []
    decoded = {"tokens": 0, "seconds": 0.0}  # over every answer, LoGo's, the own adapter's and the base model's
    for number, item in enumerate(prompts, 1):
        task, prompt = item["task"], item["prompt"]
        budget = tasks.get_task(task).max_tokens
        gen = dict(max_tokens=budget, temperature=0.0)
        # LoGo as shipped: at k = 1 a close top two both answer and the more confident one serves (logo_cpp.rerank).
        logo = router.generate(prompt, **gen)
        routing = logo.routing
        own = model.generate(prompt, adapters={task: 1.0}, **gen)
        plain = model.generate(prompt, **gen)
        probe_ms.append(routing.timings["probe_seconds"] * 1e3)
        prefill_ms.append(logo.timings.prefill_seconds * 1e3)
        for out in (logo, own, plain):
            # The first token comes from the prefill's logits; each decode step evaluates one token and samples
            # the next, so a reply that ends at end-of-generation took n_generated steps, otherwise one fewer.
            decoded["tokens"] += out.timings.n_generated - (out.finish_reason != "eos" and out.timings.n_generated > 0)
            decoded["seconds"] += out.timings.decode_seconds

        print(bold(f"[{number}] ") + _one_line(prompt) + dim(f"   (task: {task})"))
        chosen = " · ".join(f"{cyan(name) if name == task else name} {w:.2f}"
                            for name, w in sorted(zip(routing.names, routing.weights), key=lambda nw: -float(nw[1])))
        info = routing.rerank
        rerank = (f" · rerank: {info['chosen']} over {info['candidates'][1 - info['candidates'].index(info['chosen'])]}"
                  if info is not None and info["reranked"] else "")
        print(f"    LoGo chose   {chosen}" + dim(f"   probe {probe_ms[-1]:.0f} ms{rerank}"))
        for label, key, out, note in (("LoGo", "logo", logo, f"prefill {logo.timings.prefill_seconds * 1e3:.0f} ms · "
                                       f"{_tokens(logo.timings.n_generated)} in {(logo.timings.prefill_seconds + logo.timings.decode_seconds) * 1e3:.0f} ms"),
                                      ("own adapter", "own", own, f"{task} alone"),
                                      ("base model", "base", plain, "no adapter")):
            ok = tasks.score(task, out.text, item["answer"]) >= 1.0
            right[key] += ok
            mark = green("✓") if ok else red("✗")
            print(f"    {label:<12} {mark} {_one_line(out.text, 48)!r:<52}" + dim(f" {note}"))
        print(dim(f"    expected       {item['answer']!r}\n"))
    total = len(prompts)
    print(bold(f"right: LoGo {right['logo']}/{total} · own adapter {right['own']}/{total} · "
               f"base model {right['base']}/{total}"))
    rate = f"{decoded['tokens'] / decoded['seconds']:.0f} tokens/s" if decoded["seconds"] > 0 else "-"
    print(dim(f"median per prompt: probe {statistics.median(probe_ms):.0f} ms (all {len(pool)} signals and the "
              f"choice), prefill {statistics.median(prefill_ms):.0f} ms; decode {rate} over all answers"))
    print(dim("next: logo-cpp chat (talk to it) · logo-cpp eval (every router on the held-out set) · "
              "logo-cpp bench (speed against llama.cpp)"))
    return 0


def add_arguments(p) -> None:
    from .cli import add_cache_args, positive_int, seed, thread_count

    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"adapters per prompt (default {DEFAULT_K})")
    p.add_argument("--n", type=int, default=DEMO_PROMPTS, help=f"prompts, each of another task (default {DEMO_PROMPTS})")
    p.add_argument("--seed", type=seed, default=0, help="which held-out prompts to draw, in [0, 2**64) (default 0)")
    p.add_argument("--pool", type=Path, default=None, help="another adapter pool directory (default: the shipped one)")
    p.add_argument("--threads", "-t", type=thread_count, default=None)
    p.add_argument("--device", default="auto")
    add_cache_args(p)
