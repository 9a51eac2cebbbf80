"""`logo-cpp bench`: the whole speed story, logo-cpp and llama.cpp side by side in one run.

1. base model prefill and decode, per weight type;
2. prefill and decode with a k-adapter mixture (k = 1, 5, 20), llama.cpp with the same scales;
3. probe + selection time as the pool grows (N = 1 ... 1000), and resident memory per adapter;
4. per instance end to end (probe + prefill + 64 new tokens), LoGo vs the base model;
5. heterogeneous batches (B = 1, 4, 8, 16, each instance its own mixture): aggregate tokens/s vs the
   same instances one after another, and vs llama.cpp, which must run differing mixtures serially.

Random-weight models and adapters are made at the requested shapes (and reused from --workdir).
Writes JSON, a markdown report and PNG plots (with matplotlib, the `bench` extra) to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import logo_cpp
from logo_cpp import _core

from . import common
from .core import LogoRunner, bench_type
from .logo import llama_decode_rate
from ..cli import add_cache_args, positive_int


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mixtures_section(path, adapters, threads, reps, n_prompt, n_decode, ks):
    """Prefill and decode with k adapters at scales s_i = 1/k, both runtimes."""
    model = common.logo_model(path, 1024, threads)
    pool = logo_cpp.AdapterPool(model, adapters[: max(ks)])
    llama = common.LlamaCppRunner(path, threads)
    ids = common.prompt_tokens(model, n_prompt)
    session = model._session
    out = {}
    gen = dict(max_tokens=n_decode, temperature=0.0, ignore_eos=True, seed=0)
    for k in [0] + list(ks):
        mix, llama_mix = common.equal_mixture(pool, adapters, k)
        samples = {"logo_prefill": [], "logo_decode": [], "llama_prefill": [], "llama_decode": []}
        for rep in range(reps + 1):
            logo = common.logo_rates(session, ids, gen, mix)
            theirs = common.llama_rates(llama, ids, n_decode, llama_mix)
            if rep:
                for runtime, (prefill, decode) in (("logo", logo), ("llama", theirs)):
                    samples[f"{runtime}_prefill"].append(prefill)
                    samples[f"{runtime}_decode"].append(decode)
        out[k] = {key: common.median(v) for key, v in samples.items()}
    llama.close()
    for k in ks:
        for runtime in ("logo", "llama"):
            for phase in ("prefill", "decode"):
                out[k][f"{runtime}_{phase}_vs_base"] = out[k][f"{runtime}_{phase}"] / out[0][f"{runtime}_{phase}"]
    return {str(k): v for k, v in out.items()}


def pool_growth_section(path, workdir, size, threads, reps, n_prompt, sizes, k):
    """Probe + selection time and resident bytes as the pool grows."""
    adapters = common.ensure_adapters(workdir, size, max(sizes))
    model = common.logo_model(path, 1024, threads)
    ids = common.prompt_tokens(model, n_prompt)
    layer = model.n_layer - 1
    rows = []
    for n in sizes:
        t_load = _timed(lambda: None)
        t0 = time.perf_counter()
        pool = logo_cpp.AdapterPool(model, adapters[:n])
        t_load = time.perf_counter() - t0
        router = logo_cpp.LoGo(model, pool, k=k, rerank_margin=None)  # the plain routed path (no rerank)
        router.route(ids)  # builds the probe stacks
        probe, plain = [], []
        for rep in range(reps + 1):
            t_plain = _timed(lambda: (model._session.clear(0), model._session.block_input(0, ids, layer)))
            t_probe = _timed(lambda: router.route(ids))
            if rep:
                plain.append(t_plain), probe.append(t_probe)
        rows.append({"n_adapters": n, "load_seconds": t_load, "probe_seconds": common.median(probe),
                     "forward_seconds": common.median(plain),
                     "probe_over_forward": common.median(probe) / common.median(plain),
                     "bytes_per_adapter": pool.nbytes / n})
        print(f"  N={n}: probe {rows[-1]['probe_seconds'] * 1e3:.1f} ms, forward {rows[-1]['forward_seconds'] * 1e3:.1f} ms, "
              f"load {t_load:.2f} s", flush=True)
        del router, pool
    return rows


def end_to_end_section(path, adapters, threads, reps, n_prompt, new_tokens, k):
    model = common.logo_model(path, 1024, threads)
    pool = logo_cpp.AdapterPool(model, adapters)
    router = logo_cpp.LoGo(model, pool, k=k, rerank_margin=None)  # the plain routed path (no rerank)
    ids = common.prompt_tokens(model, n_prompt)
    gen = dict(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, seed=0)
    logo_t, base_t = [], []
    for rep in range(reps + 1):
        t_base = _timed(lambda: model.generate(ids, **gen))
        t_logo = _timed(lambda: router.generate(ids, **gen))
        if rep:
            base_t.append(t_base), logo_t.append(t_logo)
    return {"new_tokens": new_tokens, "logo_seconds": common.median(logo_t), "base_seconds": common.median(base_t),
            "ratio": common.median(logo_t) / common.median(base_t)}


def batch_section(path, adapters, threads, reps, n_prompt, n_decode, batches, k):
    """Aggregate decode tokens/s of B instances with their own mixtures, decoded together and one by one."""
    model = common.logo_model(path, 1024, threads)
    pool = logo_cpp.AdapterPool(model, adapters)
    router = logo_cpp.LoGo(model, pool, k=k, rerank_margin=None)  # the plain routed path (no rerank)
    words = common.prompt_tokens(model, n_prompt * 4)
    max_b = max(batches)
    prompts = [words[(i * 13) % (len(words) - n_prompt):][:n_prompt] for i in range(max_b)]
    selections = []
    for p in prompts:
        r = router.route(p)
        selections.append(list(zip(r.indices, map(float, r.weights))))
    llama = common.LlamaCppRunner(path, threads, n_ctx=1024, n_seq=max_b)
    gen = dict(max_tokens=n_decode, temperature=0.0, ignore_eos=True, seed=0)
    rows = []
    for b in batches:
        session = _core.Session(model._core, n_ctx=1024, n_seq=b)
        together, serial, llama_serial, llama_shared = [], [], [], []
        for rep in range(reps + 1):
            outs = session.generate(prompts[:b], pool=pool._core, selections=selections[:b], **gen)
            agg = sum(o["timings"]["n_generated"] - 1 for o in outs) / max(o["timings"]["decode_seconds"] for o in outs)
            one_by_one = [model._session.generate([prompts[i]], pool=pool._core, selections=[selections[i]], **gen)[0]
                          for i in range(b)]
            ser = sum(o["timings"]["n_generated"] - 1 for o in one_by_one) / sum(o["timings"]["decode_seconds"] for o in one_by_one)
            # llama.cpp: differing mixtures must run one after another (a set change rebuilds its graph).
            ll_serial = [llama_decode_rate(llama, [prompts[i]], n_decode,
                                           [(adapters[j], w) for j, w in selections[i]]) for i in range(min(b, 2))]
            ll_shared = llama_decode_rate(llama, prompts[:b], n_decode, [(adapters[j], w) for j, w in selections[0]])
            if rep:
                together.append(agg), serial.append(ser), llama_serial.append(common.median(ll_serial))
                llama_shared.append(ll_shared)
        rows.append({"instances": b, "logo_batched_tok_s": common.median(together),
                     "logo_serial_tok_s": common.median(serial),
                     "llama_cpp_differing_mixtures_serial_tok_s": common.median(llama_serial),
                     "llama_cpp_shared_mixture_tok_s": common.median(llama_shared)})
        rows[-1]["batched_over_serial"] = rows[-1]["logo_batched_tok_s"] / rows[-1]["logo_serial_tok_s"]
        rows[-1]["batched_over_llama_serial"] = rows[-1]["logo_batched_tok_s"] / rows[-1]["llama_cpp_differing_mixtures_serial_tok_s"]
        rows[-1]["batched_over_llama_shared"] = rows[-1]["logo_batched_tok_s"] / rows[-1]["llama_cpp_shared_mixture_tok_s"]
        print(f"  B={b}: {rows[-1]}", flush=True)
    llama.close()
    return rows


def plots(res, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'logo-cpp[bench]'): no plots")
        return []
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    types = list(res["base"])
    x = np.arange(len(types))
    for ax, phase in zip(axes, ("prefill", "decode")):
        ax.bar(x - 0.2, [res["base"][t][f"{phase}_tok_s"]["logo_cpp"] for t in types], 0.4, label="logo-cpp")
        ax.bar(x + 0.2, [res["base"][t][f"{phase}_tok_s"]["llama_cpp"] for t in types], 0.4, label="llama.cpp")
        ax.set_xticks(x, types)
        ax.set_title(f"base model {phase}, tokens/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "base.png", dpi=110)
    files.append("base.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ks = [k for k in res["mixtures"] if k != "0"]
    ax.plot([int(k) for k in ks], [res["mixtures"][k]["logo_decode_vs_base"] for k in ks], "o-", label="logo-cpp")
    ax.plot([int(k) for k in ks], [res["mixtures"][k]["llama_decode_vs_base"] for k in ks], "s-", label="llama.cpp")
    ax.set_xlabel("adapters in the mixture (k)")
    ax.set_ylabel("decode speed / base decode speed")
    ax.set_ylim(0, 1.2)
    ax.legend()
    ax.set_title("cost of a k-adapter mixture")
    fig.tight_layout()
    fig.savefig(out / "mixtures.png", dpi=110)
    files.append("mixtures.png")

    fig, ax1 = plt.subplots(figsize=(5.5, 3.8))
    rows = res["pool_growth"]
    ns = [r["n_adapters"] for r in rows]
    ax1.plot(ns, [r["probe_seconds"] * 1e3 for r in rows], "o-", label="probe + selection")
    ax1.plot(ns, [r["forward_seconds"] * 1e3 for r in rows], "s--", label="forward to the target block alone")
    ax1.set_xscale("log")
    ax1.set_xlabel("adapters in the pool (N)")
    ax1.set_ylabel("ms per prompt")
    ax2 = ax1.twinx()
    ax2.plot(ns, [r["bytes_per_adapter"] / 2**20 for r in rows], "^:", color="gray", label="MiB per adapter")
    ax2.set_ylabel("resident MiB per adapter")
    ax1.legend(loc="upper left")
    ax1.set_title("probe cost as the pool grows")
    fig.tight_layout()
    fig.savefig(out / "pool_growth.png", dpi=110)
    files.append("pool_growth.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    rows = res["batches"]
    bs = [r["instances"] for r in rows]
    ax.plot(bs, [r["logo_batched_tok_s"] for r in rows], "o-", label="logo-cpp, batched (own mixtures)")
    ax.plot(bs, [r["logo_serial_tok_s"] for r in rows], "s--", label="logo-cpp, one after another")
    ax.plot(bs, [r["llama_cpp_differing_mixtures_serial_tok_s"] for r in rows], "x:", label="llama.cpp, one after another")
    ax.plot(bs, [r["llama_cpp_shared_mixture_tok_s"] for r in rows], "d-.", label="llama.cpp, one shared set (best case)")
    ax.set_xlabel("instances (B)")
    ax.set_ylabel("aggregate decode tokens/s")
    ax.legend(fontsize=8)
    ax.set_title("heterogeneous batches")
    fig.tight_layout()
    fig.savefig(out / "batches.png", dpi=110)
    files.append("batches.png")
    plt.close("all")
    return files


def report(res, files) -> str:
    lines = [f"# logo-cpp bench ({res['size']}, {res['params'] / 1e6:.0f}M parameters)", "",
             f"{common.describe_machine(res['machine'])} Medians of {res['reps']} repetitions; "
             "the machine is shared, so read ratios (measured in the same run) rather than absolute numbers.", "",
             "## 1. Base model (tokens/s)", "",
             "| weights | prefill logo-cpp | prefill llama.cpp | ratio | decode logo-cpp | decode llama.cpp | ratio |",
             "|---|---|---|---|---|---|---|"]
    for t, r in res["base"].items():
        p, d = r["prefill_tok_s"], r["decode_tok_s"]
        lines.append(f"| {t} | {p['logo_cpp']:.1f} | {p['llama_cpp']:.1f} | {p['ratio']:.2f} | {d['logo_cpp']:.1f} | "
                     f"{d['llama_cpp']:.1f} | {d['ratio']:.2f} |")
    lines += ["", f"## 2. k-adapter mixtures ({res['mixture_type']}, rank-16 adapters on attn_q/attn_v, scale 1/k)", "",
              "| k | prefill logo-cpp | prefill llama.cpp | decode logo-cpp | decode llama.cpp | logo-cpp decode vs base | llama.cpp decode vs base |",
              "|---|---|---|---|---|---|---|"]
    for k, r in res["mixtures"].items():
        if k == "0":
            lines.append(f"| base | {r['logo_prefill']:.1f} | {r['llama_prefill']:.1f} | {r['logo_decode']:.1f} | {r['llama_decode']:.1f} | 1 | 1 |")
        else:
            lines.append(f"| {k} | {r['logo_prefill']:.1f} | {r['llama_prefill']:.1f} | {r['logo_decode']:.1f} | "
                         f"{r['llama_decode']:.1f} | {r['logo_decode_vs_base']:.2f} | {r['llama_decode_vs_base']:.2f} |")
    lines += ["", "## 3. Probe + selection as the pool grows", "",
              "| N | probe + selection, ms | forward to the block alone, ms | ratio | load, s | MiB per adapter |",
              "|---|---|---|---|---|---|"]
    for r in res["pool_growth"]:
        lines.append(f"| {r['n_adapters']} | {r['probe_seconds'] * 1e3:.1f} | {r['forward_seconds'] * 1e3:.1f} | "
                     f"{r['probe_over_forward']:.2f} | {r['load_seconds']:.2f} | {r['bytes_per_adapter'] / 2**20:.2f} |")
    e = res["end_to_end"]
    lines += ["", "## 4. End to end per instance", "",
              f"Probe + prefill + {e['new_tokens']} new tokens: LoGo {e['logo_seconds']:.3f} s, base model "
              f"{e['base_seconds']:.3f} s, ratio **{e['ratio']:.2f}** (the paper's PyTorch code: 4.4).", "",
              "## 5. Heterogeneous batches (each instance its own k-mixture), aggregate decode tokens/s", "",
              "| B | logo-cpp batched | logo-cpp one by one | llama.cpp one by one | llama.cpp one shared set | batched / one by one | batched / llama.cpp one by one |",
              "|---|---|---|---|---|---|---|"]
    for r in res["batches"]:
        lines.append(f"| {r['instances']} | {r['logo_batched_tok_s']:.1f} | {r['logo_serial_tok_s']:.1f} | "
                     f"{r['llama_cpp_differing_mixtures_serial_tok_s']:.1f} | {r['llama_cpp_shared_mixture_tok_s']:.1f} | "
                     f"{r['batched_over_serial']:.2f} | {r['batched_over_llama_serial']:.2f} |")
    if files:
        lines += [""] + [f"![{f}]({f})" for f in files]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="logo-cpp bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Single sections with their own options: logo-cpp bench core --help, logo-cpp bench logo --help.")
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"], help="weight types for section 1")
    parser.add_argument("--mixture-type", default="f16", help="weight type for sections 2-5")
    parser.add_argument("--ks", nargs="+", type=positive_int, default=[1, 5, 20], help="mixture sizes for section 2")
    parser.add_argument("--pool-sizes", nargs="+", type=positive_int, default=[1, 10, 100, 260, 1000],
                        help="pool sizes N for section 3")
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[1, 4, 8, 16], help="batch sizes for section 5")
    parser.add_argument("--k", type=positive_int, default=20, help="adapters per mixture in sections 3-5")
    parser.add_argument("--n-adapters", type=positive_int, default=260, help="pool size for sections 4-5")
    parser.add_argument("--prompt", type=common.prompt_length, default=128, help="prompt tokens")
    parser.add_argument("--decode", type=positive_int, default=32, help="decode steps for the tokens/s measurements")
    parser.add_argument("--e2e-tokens", type=positive_int, default=64, help="new tokens per instance in section 4")
    common.add_common_args(parser, reps=3)
    add_cache_args(parser)  # applied by `logo-cpp bench` (cli.cmd_bench)
    args = parser.parse_args(argv)
    common.check_types("--types", args.types)
    common.check_types("--mixture-type", [args.mixture_type])
    args.out.mkdir(parents=True, exist_ok=True)

    files = common.ensure_models(args.workdir, args.size, sorted(set(args.types) | {args.mixture_type}))
    adapters = common.ensure_adapters(args.workdir, args.size, args.n_adapters)
    res = {"machine": common.machine_info(args.threads), "size": args.size,
           "params": common.spec_for(args.size).parameter_count(), "reps": args.reps, "mixture_type": args.mixture_type}
    print("1. base model", flush=True)
    res["base"] = {t: bench_type(files[t], args.threads, args.reps, args.prompt, args.decode) for t in args.types}
    print("2. mixtures", flush=True)
    path = files[args.mixture_type]
    res["mixtures"] = mixtures_section(path, adapters, args.threads, args.reps, args.prompt, args.decode, args.ks)
    print("3. pool growth", flush=True)
    res["pool_growth"] = pool_growth_section(path, args.workdir, args.size, args.threads, args.reps, args.prompt,
                                             args.pool_sizes, args.k)
    print("4. end to end", flush=True)
    res["end_to_end"] = end_to_end_section(path, adapters, args.threads, args.reps, args.prompt, args.e2e_tokens, args.k)
    print("5. batches", flush=True)
    res["batches"] = batch_section(path, adapters, args.threads, args.reps, args.prompt, args.decode, args.batches, args.k)
    common.write_json(args.out / f"bench-{args.size}.json", res)
    pngs = plots(res, args.out)
    text = report(res, pngs)
    (args.out / f"bench-{args.size}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
