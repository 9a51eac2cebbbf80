"""`logo-cpp demo`: LoGo on the shipped model, next to the base model, in the terminal."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from .default_model import load_toy_manifest as load_manifest, read_eval_set

DEMO_TASKS = 6
# On the shipped model, mixing several of its narrow adapters cancels them out (logo-cpp eval: k=1 0.15,
# k=3 0.00 exact match), so the demo routes to one adapter by default; --k shows mixtures.
DEFAULT_K = 1


def _style(code: str):
    enabled = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    return (lambda s: f"\033[{code}m{s}\033[0m") if enabled else (lambda s: s)


bold, dim, green, red, cyan = _style("1"), _style("2"), _style("32"), _style("31"), _style("36")


def run_demo(threads: Optional[int] = None, device: str = "auto", model_dir: Optional[Path] = None,
             k: int = DEFAULT_K) -> int:
    import logo_cpp

    model_dir, manifest = load_manifest(model_dir)
    t0 = time.perf_counter()
    model = logo_cpp.Model(model_dir / manifest["base"]["f16"], n_ctx=256, device=device, n_threads=threads)
    pool = logo_cpp.AdapterPool(model, model_dir / "adapters")
    load_s = time.perf_counter() - t0
    router = logo_cpp.LoGo(model, pool, k=k)
    items = read_eval_set(model_dir, manifest)
    # A handful of mixed prompts: the first held-out prompt of several tasks, in mixed order.
    seen, prompts = set(), []
    for it in items:
        if it["task"] not in seen:
            seen.add(it["task"])
            prompts.append(it)
        if len(prompts) == DEMO_TASKS:
            break

    print(bold("logo-cpp demo") + dim(f"  model {manifest['name']} ({manifest['base']['n_params'] / 1e6:.1f}M parameters, "
                                      f"{model.device}), {len(pool)} task adapters, LoGo k={k}, signal norm"))
    print(dim(f"loaded in {load_s:.2f} s; no task labels are given: LoGo picks adapters from each prompt alone\n"))
    gen = dict(max_tokens=32, temperature=0.0)
    right_logo = right_own = right_base = 0
    probe_ms, tokens, gen_s = [], 0, 0.0
    for n, it in enumerate(prompts, 1):
        routing = router.route(it["prompt"])
        t = time.perf_counter()
        logo_out = model.generate(it["prompt"], adapters=routing.as_dict(), **gen)
        gen_s += time.perf_counter() - t
        tokens += len(logo_out.tokens)
        base_out = model.generate(it["prompt"], **gen)
        # The prompt's own task adapter, which a router with perfect knowledge would pick.
        own_out = model.generate(it["prompt"], adapters={it["task"]: 1.0}, **gen) if it["task"] in pool.names else None
        probe_ms.append(routing.timings["probe_seconds"] * 1e3)
        ok_logo = logo_out.text.strip() == it["answer"]
        ok_base = base_out.text.strip() == it["answer"]
        right_logo += ok_logo
        right_base += ok_base
        ok_own = own_out is not None and own_out.text.strip() == it["answer"]
        right_own += ok_own
        prompt = it["prompt"].replace("\n", " / ").strip()
        print(bold(f"[{n}] ") + prompt + dim(f"   (task: {it['task']})"))
        chosen = ", ".join(f"{cyan(name)} {w:.2f}" for name, w in zip(routing.names, routing.weights))
        runners_up = ", ".join(pool.names[i] for i in routing.ranking()[len(routing.names):len(routing.names) + 3])
        print(f"    LoGo chose  {chosen}" + (dim(f"   (next by signal: {runners_up})") if runners_up else ""))
        mark = lambda ok: green("✓") if ok else red("✗")  # noqa: E731
        print(f"    LoGo        {mark(ok_logo)} {logo_out.text.strip()!r}")
        if own_out is not None:
            print(f"    own adapter {mark(ok_own)} {own_out.text.strip()!r}" + dim(f"   ({it['task']} alone)"))
        print(f"    base model  {mark(ok_base)} {base_out.text.strip()!r}")
        print(dim(f"    expected      {it['answer']!r}\n"))
    print(bold(f"LoGo {right_logo}/{len(prompts)} correct, own adapter {right_own}/{len(prompts)}, "
               f"base model {right_base}/{len(prompts)}."))
    print(dim(f"probe (all {len(pool)} signals + selection): median {sorted(probe_ms)[len(probe_ms) // 2]:.1f} ms per prompt; "
              f"generation with the mixture: {tokens / max(gen_s, 1e-9):.0f} tokens/s"))
    print(dim("full comparison: logo-cpp eval; speed against llama.cpp: logo-cpp bench"))
    return 0
