"""LoGo speed: probe cost, mixture decode, heterogeneous batches and end-to-end cost per instance,
logo-cpp and llama.cpp side by side in one run on the same files and threads.

A ~150M-parameter model with N rank-16 adapters on attn_q and attn_v of every layer, k = 20, 128-token prompts.

    logo-cpp bench logo [--type f16] [--n-adapters 260] [--k 20] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import logo_cpp

from . import common
from logo_cpp import _core  # noqa: E402
from ..cli import add_cache_args, positive_int


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def llama_decode_rate(runner, ids_per_seq, n_decode, mixture_paths):
    """Aggregate decode tokens/s of llama.cpp for sequences that share one adapter set."""
    runner.set_adapters(mixture_paths)
    runner.clear()
    firsts = []
    for s, ids in enumerate(ids_per_seq):
        _, tok = runner.prefill(ids, seq=s)
        firsts.append(tok)
    seconds = runner.decode(firsts, [len(ids) for ids in ids_per_seq], n_decode)
    return len(ids_per_seq) * n_decode / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="logo-cpp bench logo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="f16", help="weight type of the base model")
    parser.add_argument("--n-adapters", type=positive_int, default=260, help="pool size N (rank-16 adapters on attn_q, attn_v)")
    parser.add_argument("--k", type=positive_int, default=20, help="adapters per mixture")
    parser.add_argument("--batch", type=positive_int, default=8, help="instances in the heterogeneous batch")
    parser.add_argument("--prompt", type=common.prompt_length, default=128, help="prompt tokens")
    parser.add_argument("--decode", type=positive_int, default=64, help="decode steps for the tokens/s measurements")
    parser.add_argument("--e2e-tokens", type=positive_int, default=256, help="new tokens per instance, end to end")
    common.add_common_args(parser, reps=3)
    add_cache_args(parser)  # applied by `logo-cpp bench` (cli.cmd_bench)
    args = parser.parse_args(argv)
    common.check_types("--type", [args.type])

    path = common.ensure_models(args.workdir, args.size, [args.type])[args.type]
    adapter_paths = common.ensure_adapters(args.workdir, args.size, args.n_adapters)
    model = common.logo_model(path, 1024, args.threads)
    load_s, pool = timed(lambda: logo_cpp.AdapterPool(model, adapter_paths))
    # The plain routed generation, timed against llama.cpp (no confidence rerank: rerank_cost.py measures that).
    router = logo_cpp.LoGo(model, pool, k=args.k, rerank_margin=None)
    words = common.prompt_tokens(model, 4 * args.prompt)
    prompts = [words[i * 7: i * 7 + args.prompt] for i in range(args.batch)]
    layer = model.n_layer - 1
    res = {"machine": common.machine_info(args.threads), "file": path.name, "n_adapters": len(pool), "k": args.k,
           "pool_load_seconds": load_s, "pool_bytes": pool.nbytes, "bytes_per_adapter": pool.nbytes / len(pool)}
    print(f"loaded {len(pool)} adapters in {load_s:.2f} s ({pool.nbytes / 2**20:.0f} MiB)", flush=True)

    # 1. Probe (forward to the last block + all N signals + selection) vs the same forward alone.
    session = model._session
    router.route(prompts[0])  # builds the probe stacks once
    probe, plain = [], []
    for rep in range(args.reps + 1):
        for ids in prompts[:2]:
            t_plain, _ = timed(lambda: (session.clear(0), session.block_input(0, ids, layer)))
            t_probe, _ = timed(lambda: router.route(ids))
            if rep > 0:
                plain.append(t_plain)
                probe.append(t_probe)
    res["probe"] = {"probe_seconds": common.median(probe), "forward_seconds": common.median(plain),
                    "ratio": common.median(probe) / common.median(plain)}
    print("probe", res["probe"], flush=True)

    # 2. Decode with the k-mixture vs the base model, both runtimes.
    routing = router.route(prompts[0])
    selection = list(zip(routing.indices, map(float, routing.weights)))
    mixture_paths = [(adapter_paths[i], float(w)) for i, w in selection]
    llama = common.LlamaCppRunner(path, args.threads, n_ctx=1024, n_seq=args.batch)
    ours_base, ours_mix, llama_base, llama_mix = [], [], [], []
    gen = dict(max_tokens=args.decode, temperature=0.0, ignore_eos=True, seed=0)
    for rep in range(args.reps + 1):
        b = session.generate([prompts[0]], **gen)[0]["timings"]["decode_tokens_per_second"]
        m = session.generate([prompts[0]], pool=pool._core, selections=[selection], **gen)[0]["timings"]["decode_tokens_per_second"]
        lb = llama_decode_rate(llama, [prompts[0]], args.decode, [])
        lm = llama_decode_rate(llama, [prompts[0]], args.decode, mixture_paths)
        if rep > 0:
            ours_base.append(b), ours_mix.append(m), llama_base.append(lb), llama_mix.append(lm)
    res["mixture_decode"] = {
        "logo_cpp": {"base_tok_s": common.median(ours_base), "mixture_tok_s": common.median(ours_mix),
                     "ratio": common.median(ours_mix) / common.median(ours_base)},
        "llama_cpp": {"base_tok_s": common.median(llama_base), "mixture_tok_s": common.median(llama_mix),
                      "ratio": common.median(llama_mix) / common.median(llama_base)},
    }
    print("mixture decode", res["mixture_decode"], flush=True)

    # 3. Heterogeneous batch: B instances, each its own mixture, decoded together.
    batch_session = _core.Session(model._core, n_ctx=1024, n_seq=args.batch)
    selections = []
    for ids in prompts:
        r = router.route(ids)
        selections.append(list(zip(r.indices, map(float, r.weights))))
    ours_batch, llama_shared, llama_single = [], [], []
    for rep in range(args.reps + 1):
        outs = batch_session.generate(prompts, pool=pool._core, selections=selections, **gen)
        decode_s = max(o["timings"]["decode_seconds"] for o in outs)
        agg = sum(o["timings"]["n_generated"] - 1 for o in outs) / decode_s
        shared = llama_decode_rate(llama, prompts, args.decode, mixture_paths)
        single = llama_decode_rate(llama, prompts[:1], args.decode, mixture_paths)
        if rep > 0:
            ours_batch.append(agg), llama_shared.append(shared), llama_single.append(single)
    res["batch"] = {"instances": args.batch, "logo_cpp_aggregate_tok_s": common.median(ours_batch),
                    "llama_cpp_shared_mixture_aggregate_tok_s": common.median(llama_shared),
                    "llama_cpp_single_sequence_tok_s": common.median(llama_single),
                    "ratio_vs_llama_shared": common.median(ours_batch) / common.median(llama_shared),
                    "llama_cpp_differing_mixtures_serial_tok_s": common.median(llama_single)}
    print("batch", res["batch"], flush=True)

    # 4. End to end per instance: probe + prefill + N new tokens, LoGo vs the base model alone.
    e2e = dict(gen, max_tokens=args.e2e_tokens)
    logo_t, base_t = [], []
    for rep in range(args.reps + 1):
        t_base, _ = timed(lambda: session.generate([prompts[1]], **e2e))
        t_logo, _ = timed(lambda: router.generate(prompts[1], **e2e))
        if rep > 0:
            base_t.append(t_base), logo_t.append(t_logo)
    res["end_to_end"] = {"new_tokens": args.e2e_tokens, "logo_seconds": common.median(logo_t),
                         "base_seconds": common.median(base_t), "ratio": common.median(logo_t) / common.median(base_t)}
    print("end to end", res["end_to_end"], flush=True)
    llama.close()

    common.write_json(args.out / f"logo-{args.size}-{args.type}.json", res)
    md = f"""# LoGo speed ({args.size} {args.type}, N = {len(pool)} rank-16 adapters on attn_q/attn_v, k = {args.k})

{common.describe_machine(res['machine'])}

Pool load: {load_s:.2f} s for {len(pool)} adapters, {res['bytes_per_adapter'] / 2**20:.2f} MiB resident per adapter.
Medians of {args.reps} repetitions, prompts of {args.prompt} tokens.

| measure | logo-cpp | reference | ratio | target |
|---|---|---|---|---|
| probe (forward to block {layer} + {len(pool)} signals + top-{args.k}) vs the same forward, s | {res['probe']['probe_seconds']:.4f} | {res['probe']['forward_seconds']:.4f} | {res['probe']['ratio']:.3f} | <= 1.15 |
| decode with the k = {args.k} mixture vs base, tok/s | {res['mixture_decode']['logo_cpp']['mixture_tok_s']:.1f} | {res['mixture_decode']['logo_cpp']['base_tok_s']:.1f} | {res['mixture_decode']['logo_cpp']['ratio']:.3f} | >= 0.9 |
| llama.cpp: decode with the same {args.k} weighted adapters vs its base, tok/s | {res['mixture_decode']['llama_cpp']['mixture_tok_s']:.1f} | {res['mixture_decode']['llama_cpp']['base_tok_s']:.1f} | {res['mixture_decode']['llama_cpp']['ratio']:.3f} | (about 0.69) |
| batch of {args.batch} instances, each its own mixture (logo-cpp) vs {args.batch} sequences sharing one set (llama.cpp), aggregate tok/s | {res['batch']['logo_cpp_aggregate_tok_s']:.1f} | {res['batch']['llama_cpp_shared_mixture_aggregate_tok_s']:.1f} | {res['batch']['ratio_vs_llama_shared']:.3f} | >= 0.9 |
| llama.cpp decoding differing mixtures one after another, tok/s | | {res['batch']['llama_cpp_differing_mixtures_serial_tok_s']:.1f} | | |
| end to end per instance (probe + prefill + {args.e2e_tokens} tokens), LoGo vs base, s | {res['end_to_end']['logo_seconds']:.3f} | {res['end_to_end']['base_seconds']:.3f} | {res['end_to_end']['ratio']:.3f} | <= 1.15 (paper: 4.4) |
"""
    (args.out / f"logo-{args.size}-{args.type}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
