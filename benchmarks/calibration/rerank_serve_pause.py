"""Session 8 (issue 11): what `logo-cpp serve --rerank` costs the OTHER requests (why serve keeps the rerank opt-in).

    flock /work/locks/heavy.lock python benchmarks/calibration/rerank_serve_pause.py --threads 1 \
        > docs/calibration/rerank-serve-pause.txt

The server runs a reranked request's two candidate answers on its engine thread before the request starts
(logo_cpp/server/engine.py), so every running stream waits meanwhile. Measured on the shipped model and pool, in
process (the server on a thread, the official openai client): a long streamed request A (a story, max_tokens
--story-tokens, greedy) runs; after its 8th chunk a short request B whose top two calibrated scores are close
(a held-out addition prompt, margin < 0.5: reranked when the server has --rerank) is sent, and A's gaps between
chunks are recorded. Each setting (no rerank, --rerank 0.5) runs --rounds times, interleaved. Reported: A's median
gap, its largest gap while B was in flight, and B's latency and rerank_ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def one_round(c, prompt_b: str, story_tokens: int) -> dict:
    stamps: list[float] = []
    sent = threading.Event()
    b_result: dict = {}

    def send_b():
        sent.wait()
        t0 = time.perf_counter()
        r = c.completions.create(model="logo", prompt=prompt_b, max_tokens=8, temperature=0)
        b_result.update(start=t0, end=time.perf_counter(), rerank=r.model_extra["routing"].get("rerank"))

    thread = threading.Thread(target=send_b)
    thread.start()
    for chunk in c.completions.create(model="logo", prompt="Write a long story about a dragon who learns to sing.",
                                      max_tokens=story_tokens, temperature=0, stream=True,
                                      extra_body={"ignore_eos": True}):
        if any(ch.text for ch in chunk.choices):
            stamps.append(time.perf_counter())
            if len(stamps) == 8:
                sent.set()
    sent.set()
    thread.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    during = [b - a for a, b in zip(stamps, stamps[1:]) if b > b_result["start"] and a < b_result["end"]]
    return {"median_gap_ms": 1e3 * statistics.median(gaps), "max_gap_during_b_ms": 1e3 * max(during or [0.0]),
            "b_latency_ms": 1e3 * (b_result["end"] - b_result["start"]), "rerank": b_result["rerank"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--story-tokens", type=int, default=96)
    args = ap.parse_args(argv)
    import os

    os.environ["LOGO_TEST_THREADS"] = str(args.threads)
    import logo_cpp
    from logo_cpp import default_model
    from server_util import client, running_server

    files = default_model.adapter_files()
    # A held-out addition prompt whose top two (addition, multiplication) are under 0.5 apart (logo-cpp demo --seed 1).
    model = logo_cpp.Model(default_model.base_model_path(), n_ctx=512, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    router = logo_cpp.LoGo(model, pool, k=1)
    prompt_b = None
    for it in default_model.read_eval_set():
        if it["task"] == "addition":
            r = router.route(it["prompt"])
            order = sorted(range(len(pool)), key=lambda i: -float(r.signals[i]))
            if float(r.signals[order[0]] - r.signals[order[1]]) < 0.5:
                prompt_b = it["prompt"]
                break
    pool.close()
    print(f"request B: {prompt_b!r}", flush=True)
    rows = {"no rerank": [], "--rerank 0.5": []}
    servers = {}
    for name, margin in (("no rerank", None), ("--rerank 0.5", 0.5)):
        servers[name] = running_server(default_model.base_model_path(), list(files.values()), n_slots=2, k=1,
                                       n_ctx=512, rerank_margin=margin, warm_up=True)
    bgs = {name: ctx.__enter__() for name, ctx in servers.items()}
    try:
        for rnd in range(args.rounds):
            for name, bg in bgs.items():
                row = one_round(client(bg), prompt_b, args.story_tokens)
                rows[name].append(row)
                print(f"  round {rnd} {name:<13} A median gap {row['median_gap_ms']:.0f} ms, largest gap while B ran "
                      f"{row['max_gap_during_b_ms']:.0f} ms; B {row['b_latency_ms']:.0f} ms; B rerank "
                      f"{None if row['rerank'] is None else (row['rerank']['reranked'], row['rerank'].get('rerank_ms'))}",
                      flush=True)
    finally:
        for ctx in servers.values():
            ctx.__exit__(None, None, None)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print("\nmedians over rounds:")
    for name, rr in rows.items():
        print(f"  {name:<13} A median gap {med([r['median_gap_ms'] for r in rr]):.0f} ms, A's largest gap while B ran "
              f"{med([r['max_gap_during_b_ms'] for r in rr]):.0f} ms, B latency {med([r['b_latency_ms'] for r in rr]):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
