"""Base-model speed, logo-cpp vs llama.cpp, side by side in one run on the same GGUF files and threads.

For each weight type: prefill of a 128-token prompt and 64 greedy decode steps, several repetitions
alternating the two runtimes, medians and ratios. Both are driven the same way from Python (one call per
evaluation, argmax in numpy), so per-call overheads are comparable.

    logo-cpp bench core [--types f16 q8_0 q4_0] [--reps 5] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import logo_cpp

from . import common
from ..cli import positive_int


class LogoRunner:
    def __init__(self, path: Path, threads: int, n_ctx: int = 1024, n_seq: int = 1):
        self.model = common.logo_model(path, n_ctx, threads)
        self.session = logo_cpp._core.Session(self.model._core, n_ctx=n_ctx, n_seq=n_seq, n_batch=common.PROMPT_BATCH)

    def prefill(self, ids, seq=0, **mixture):
        self.session.clear(seq)
        t0 = time.perf_counter()
        logits = self.session.evaluate(seq, 1, ids, **mixture)
        tok = int(np.argmax(logits[0]))
        return time.perf_counter() - t0, tok

    def decode(self, first_tokens, n, **mixture):
        tokens = list(first_tokens)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = self.session.evaluate(0, len(tokens), tokens, **mixture)
            tokens = [int(t) for t in logits.argmax(axis=1)]
        return time.perf_counter() - t0


def bench_type(path: Path, threads: int, reps: int, n_prompt: int, n_decode: int) -> dict:
    ours = LogoRunner(path, threads)
    theirs = common.LlamaCppRunner(path, threads)
    ids = common.prompt_tokens(ours.model, n_prompt)
    samples = {k: [] for k in ("logo_prefill", "llama_prefill", "logo_decode", "llama_decode")}
    for rep in range(reps + 1):  # the first repetition warms caches and is dropped
        order = [("logo", ours), ("llama", theirs)] if rep % 2 == 0 else [("llama", theirs), ("logo", ours)]
        for name, runner in order:
            if name == "llama":
                runner.clear()
                t_prefill, tok = runner.prefill(ids)
                t_decode = runner.decode([tok], [len(ids)], n_decode)
            else:
                t_prefill, tok = runner.prefill(ids)
                t_decode = runner.decode([tok], n_decode)
            if rep > 0:
                samples[f"{name}_prefill"].append(n_prompt / t_prefill)
                samples[f"{name}_decode"].append(n_decode / t_decode)
    theirs.close()
    med = {k: common.median(v) for k, v in samples.items()}
    return {
        "file": path.name,
        "prefill_tok_s": {"logo_cpp": med["logo_prefill"], "llama_cpp": med["llama_prefill"],
                          "ratio": med["logo_prefill"] / med["llama_prefill"]},
        "decode_tok_s": {"logo_cpp": med["logo_decode"], "llama_cpp": med["llama_decode"],
                         "ratio": med["logo_decode"] / med["llama_decode"]},
        "samples": samples,
    }


def report(results: dict) -> str:
    lines = ["| weights | prefill logo-cpp | prefill llama.cpp | ratio | decode logo-cpp | decode llama.cpp | ratio |",
             "|---|---|---|---|---|---|---|"]
    for t, r in results["types"].items():
        p, d = r["prefill_tok_s"], r["decode_tok_s"]
        lines.append(f"| {t} | {p['logo_cpp']:.1f} | {p['llama_cpp']:.1f} | {p['ratio']:.2f} | "
                     f"{d['logo_cpp']:.2f} | {d['llama_cpp']:.2f} | {d['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="logo-cpp bench core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"], help="weight types to compare")
    parser.add_argument("--prompt", type=common.prompt_length, default=128, help="prompt tokens for prefill")
    parser.add_argument("--decode", type=positive_int, default=64, help="greedy decode steps")
    common.add_common_args(parser, reps=5)
    args = parser.parse_args(argv)
    common.check_types("--types", args.types)

    files = common.ensure_models(args.workdir, args.size, args.types)
    results = {"machine": common.machine_info(args.threads), "size": args.size,
               "params": common.spec_for(args.size).parameter_count(),
               "prompt_tokens": args.prompt, "decode_tokens": args.decode, "reps": args.reps, "types": {}}
    for t in args.types:
        print(f"[{t}] {files[t].name} ...", flush=True)
        results["types"][t] = bench_type(files[t], args.threads, args.reps, args.prompt, args.decode)
    table = report(results)
    print(table)
    common.write_json(args.out / f"core-{args.size}.json", results)
    (args.out / f"core-{args.size}.md").write_text(
        f"# Base model speed, logo-cpp vs llama.cpp ({args.size}, {results['params'] / 1e6:.0f}M parameters)\n\n"
        f"{common.describe_machine(results['machine'])}\n\nPrompt {args.prompt} tokens, {args.decode} decode steps, median of {args.reps} "
        f"repetitions (tokens/s, higher is better; ratio = logo-cpp / llama.cpp).\n\n{table}\n")


if __name__ == "__main__":
    main()
