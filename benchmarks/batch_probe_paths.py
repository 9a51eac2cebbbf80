"""The batched and probe paths of several builds of logo-cpp, side by side in one run (issue 15: "keep the
batched and probe paths at least as fast as now").

Each build is a Python interpreter with its own logo-cpp installed (a venv per commit). Every round runs one
worker process per build, in an order that rotates each round, on the same model, adapters, prompts and
threads; the report gives each build's medians over rounds and the median of the per-round ratios to the
reference build (the first one named), so slow spells of a shared machine hit neighbouring measurements alike.

What a worker measures (in its own process, after one warm-up of each):
- probe: the paper's probe and top-k selection (`_core.route` with its defaults: the last block's attn_q input,
  last token, no calibration; the same computation in every build) over the whole pool, probe="base" and
  probe="all"; and the forward pass to that block alone (`block_input`), for probe / forward;
- batched: `Session.generate` of B prompts together, each with its own k-adapter mixture (per-sequence stacks),
  aggregate decode tokens/s;
- continuous batching (the server's path): `ContinuousBatch` with B slots, B requests with their own mixtures,
  aggregate tokens/s from the first start (prefill, the slot's mixture written) to the last request's end, for
  the stacked and the pooled slot layouts.

    python benchmarks/batch_probe_paths.py --build new=.venv/bin/python --build old=/path/venv/bin/python \\
        [--model M.gguf] [--adapters DIR] [--rounds 5] [--budget 420] [--out docs/bench]
A build may carry environment settings: --build new-nokernels=.venv/bin/python:LOGO_PAIR_MATVEC=0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEYS = {  # result key: (what, higher is better)
    "probe_base_ms": ("probe + selection, probe='base' (ms)", False),
    "probe_all_ms": ("probe + selection, probe='all' (ms)", False),
    "forward_ms": ("forward to the probed block alone (ms)", False),
    "batched_tok_s": ("Session.generate, B sequences, own mixtures (aggregate decode tok/s)", True),
    "cb_stacked_tok_s": ("ContinuousBatch, stacked slots (aggregate tok/s, starts included)", True),
    "cb_pooled_tok_s": ("ContinuousBatch, pooled slots (aggregate tok/s, starts included)", True),
}


# -- worker (runs inside each build's interpreter) ----------------------------------------------------
def worker(args) -> dict:
    import logo_cpp
    from logo_cpp import _core

    adapters = sorted(Path(args.adapters).glob("*.gguf"))
    model = logo_cpp.Model(args.model, n_ctx=512, n_threads=args.threads, repack=args.repack)
    pool = logo_cpp.AdapterPool(model, adapters)
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines()]
    prompts = [model.tokenize(p) for p in prompts[:: max(1, len(prompts) // args.batch)][: args.batch]]
    n = len(pool)
    selections = [[((4 * i + j) % n, 1.0 / args.k) for j in range(args.k)] for i in range(args.batch)]
    out: dict = {"n_adapters": n, "prompt_tokens": [len(p) for p in prompts]}
    session = model._session
    layer = model.n_layer - 1

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def median_ms(fn, reps) -> float:
        fn()  # warm-up (the first route builds the probe stacks)
        return 1e3 * statistics.median(timed(fn) for _ in range(reps))

    ids = prompts[0]
    route = lambda probe: _core.route(session, 0, pool._core, ids, k=args.k, probe=probe)  # noqa: E731
    out["probe_base_ms"] = median_ms(lambda: route("base"), args.reps * 4)
    out["probe_all_ms"] = median_ms(lambda: route("all"), args.reps * 4)
    out["forward_ms"] = median_ms(lambda: (session.clear(0), session.block_input(0, ids, layer)), args.reps * 4)

    gen = dict(max_tokens=args.decode, temperature=0.0, ignore_eos=True, seed=0)
    batch_session = _core.Session(model._core, n_ctx=512, n_seq=args.batch)

    def batched() -> float:
        outs = batch_session.generate(prompts, pool=pool._core, selections=selections, **gen)
        return sum(o["timings"]["n_generated"] - 1 for o in outs) / max(o["timings"]["decode_seconds"] for o in outs)

    batched()
    out["batched_tok_s"] = statistics.median(batched() for _ in range(args.reps))

    for layout in ("stacked", "pooled"):
        cb = _core.ContinuousBatch(model._core, n_ctx=512, n_slots=args.batch, pool=pool._core, layout=layout)

        def serve() -> float:
            # From the first request's start (prefill, its slot's mixture written) to the last one's end.
            t0 = time.perf_counter()
            for i, p in enumerate(prompts):
                cb.start(i, p, pool=pool._core, selection=selections[i], **gen)
            tokens = len(prompts)  # each start samples a first token
            while cb.n_active:
                tokens += len(cb.step())
            return tokens / (time.perf_counter() - t0)

        serve()
        out[f"cb_{layout}_tok_s"] = statistics.median(serve() for _ in range(args.reps))
    out["logo_cpp"] = getattr(logo_cpp, "__version__", "?")
    return out


# -- driver ----------------------------------------------------------------------------------------------
def parse_build(text: str) -> tuple[str, str, dict]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--build: expected NAME=PYTHON[:VAR=VALUE,...], got {text!r}")
    python, _, env_text = rest.partition(":")
    env = dict(item.split("=", 1) for item in env_text.split(",") if item)
    return name, python, env


def report(res: dict) -> str:
    names = [b["name"] for b in res["builds"]]
    ref = names[0]
    # Every build against the reference, and the later ones against the second build as well.
    pairs = [(ref, n) for n in names[1:]] + [(names[1], n) for n in names[2:]]
    lines = [f"# Batched and probe paths, builds side by side ({res['model']})", "",
             f"{res['machine']} Default OpenMP policy; {len(res['rounds'])} rounds, each "
             f"running every build once in a rotating order (load average 1/5/15 min before "
             f"{'/'.join(f'{x:.2f}' for x in res['load_before'])}, after "
             f"{'/'.join(f'{x:.2f}' for x in res['load_after'])}). {res['n_adapters']} adapters "
             f"({res['adapters']}), k = {res['k']} per mixture, B = {res['batch']} prompts of "
             f"{res['prompt_tokens']} tokens, {res['decode']} new tokens each.", "",
             "Builds: " + "; ".join(f"**{b['name']}** {b['what']}" for b in res["builds"]), "",
             "Medians over rounds; 'B x A' is the median over rounds of build B's figure over build A's in the same "
             "round, written so that > 1 means B is faster (for times: A's time over B's), with the range over "
             "rounds in brackets.", "",
             "| measure | " + " | ".join(names) + " | " + " | ".join(f"{b} x {a}" for a, b in pairs) + " |",
             "|---" * (1 + len(names) + len(pairs)) + "|"]
    for key, (label, higher) in KEYS.items():
        cells, ratios = [], []
        for n in names:
            vals = [r[n][key] for r in res["rounds"] if n in r]
            cells.append(f"{statistics.median(vals):.1f}" if vals else "-")
        for a, n in pairs:
            rs = [(r[n][key] / r[a][key]) if higher else (r[a][key] / r[n][key])
                  for r in res["rounds"] if n in r and a in r]
            ratios.append(f"{statistics.median(rs):.3f} [{min(rs):.2f}-{max(rs):.2f}]" if rs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    ratios = {n: [r[n]["probe_base_ms"] / r[n]["forward_ms"] for r in res["rounds"] if n in r] for n in names}
    lines += ["", "Probe over forward to the same block (each build's own ratio, medians): " +
              ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in ratios.items() if v) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="append", type=parse_build, default=[], metavar="NAME=PYTHON[:VAR=VALUE]",
                        help="a build to measure (its Python, with logo-cpp installed); the first is the reference")
    parser.add_argument("--what", action="append", default=[], help="a description per --build, in order")
    parser.add_argument("--model", type=Path, default=None, help="base GGUF (default: the shipped SmolLM2 Q4_1)")
    parser.add_argument("--adapters", type=Path, default=REPO / "models" / "pool" / "adapters")
    parser.add_argument("--prompts", type=Path, default=REPO / "models" / "pool" / "eval.jsonl")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--k", type=int, default=8, help="adapters per mixture")
    parser.add_argument("--batch", type=int, default=4, help="sequences / slots (B)")
    parser.add_argument("--decode", type=int, default=32, help="new tokens per sequence")
    parser.add_argument("--reps", type=int, default=3, help="repetitions inside a worker (probes: 4x this)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; no new round starts after this")
    parser.add_argument("--repack", type=int, default=None, help="1/0 (default: not cpu_has_amx(), as the tests)")
    parser.add_argument("--out", type=Path, default=Path("logo-cpp-bench"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.model is None:
        from logo_cpp import default_model

        args.model = default_model.base_model_path()
    if args.repack is None:
        from logo_cpp._llama_cpp import cpu_has_amx

        args.repack = int(not cpu_has_amx())
    if args.worker:
        args.repack = bool(args.repack)
        print(json.dumps(worker(args)))
        return
    if not args.build:
        parser.error("name at least one --build")
    worker_args = ["--worker", "--model", str(args.model), "--adapters", str(args.adapters), "--prompts",
                   str(args.prompts), "--threads", str(args.threads), "--k", str(args.k), "--batch", str(args.batch),
                   "--decode", str(args.decode), "--reps", str(args.reps), "--repack", str(args.repack)]
    from logo_cpp.bench import common

    res = {"machine": common.describe_machine(common.machine_info(args.threads)), "model": Path(args.model).name,
           "threads": args.threads, "k": args.k, "batch": args.batch, "decode": args.decode,
           "adapters": os.path.relpath(args.adapters, REPO) if Path(args.adapters).resolve().is_relative_to(REPO)
           else str(args.adapters), "load_before": os.getloadavg(), "rounds": [],
           "builds": [{"name": n, "python": p, "env": e, "what": (args.what[i] if i < len(args.what) else "")}
                      for i, (n, p, e) in enumerate(args.build)],
           "command": " ".join(sys.argv)}
    start = time.monotonic()
    for rnd in range(args.rounds):
        if rnd and time.monotonic() - start > args.budget:
            print(f"budget reached after {rnd} rounds", flush=True)
            break
        order = args.build[rnd % len(args.build):] + args.build[: rnd % len(args.build)]
        row = {}
        for name, python, env in order:
            run_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LOGO_PAIR_MATVEC")}
            run_env.update(env)
            # Run from /tmp so that a checkout on sys.path never shadows the build's own installed package.
            out = subprocess.run([python, str(Path(__file__).resolve()), *worker_args], capture_output=True, text=True,
                                 env=run_env, cwd="/tmp", timeout=300)
            if out.returncode != 0:
                raise SystemExit(f"build {name} failed:\n{out.stderr[-3000:]}")
            row[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {rnd} {name}: " + ", ".join(f"{k} {row[name][k]:.1f}" for k in KEYS), flush=True)
        res["rounds"].append(row)
        first = next(iter(row.values()))
        res.update(n_adapters=first["n_adapters"], prompt_tokens=first["prompt_tokens"], load_after=os.getloadavg())
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"paths-{Path(args.model).stem}"
        (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
        (args.out / f"{stem}.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
