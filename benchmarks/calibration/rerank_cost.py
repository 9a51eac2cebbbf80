"""What the confidence rerank costs per reranked prompt, before (session 6: two teacher-forced passes after the
greedy batch of two) and after (each answer alone, scored by the decoder's own log-probabilities), side by side.

    flock /work/locks/heavy.lock python benchmarks/calibration/rerank_cost.py --threads 1 --prompts 24 --rounds 3

Takes the first shipped-pool in-pool held-out prompts (every --stride-th) whose default k = 1 top-two margin is below
the rerank margin (the prompts the rerank acts on), and times, interleaved per prompt and round (greedy, the
task's max_tokens, the same routing):
  plain   the default router: route + greedy generation with the top adapter (LoGo(k=1).generate)
  before  route + both candidates' greedy answers (one batch of two, no log-probabilities) + a teacher-forced pass
          per answer (prompt without its last token, then last token + answer with logits; session 6's scoring)
  after   LoGo(k=1, rerank_margin).generate: route + each candidate's answer alone, with the decoder's
          log-probabilities (session 7)
Reports medians per prompt and the ratios before/plain, after/plain, after/before (medians of per-prompt ratios),
and whether before and after keep the same adapter. The machine is shared: read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from correctness import max_tokens_for  # noqa: E402


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def teacher_forced_mean(model, pool, index, ids, answer, ended) -> float:
    """Session 6's score (logo_cpp/rerank.py before the decoder reported log-probabilities): one teacher-forced pass
    over prompt + answer with adapter ``index`` alone; mean token log-prob plus log P(any end token) when ended."""
    mix = dict(pool=pool._core, selections=[[(int(index), 1.0)]])
    with model._lock:
        session = model._session
        session.clear(0)
        try:
            if len(ids) > 1:
                session.evaluate(0, 1, ids[:-1], all_logits=False, **mix)
            logits = session.evaluate(0, 1, ids[-1:] + list(answer), all_logits=True, **mix)
        finally:
            session.clear(0)
    lp = log_softmax(np.asarray(logits))
    values = [lp[t, a] for t, a in enumerate(answer)]
    if ended:
        values.append(np.logaddexp.reduce(lp[len(answer), model._end_of_generation_tokens()]))
    return float(np.mean(values)) if values else 0.0


def before(model, pool, router, ids, max_tokens) -> str:
    routing = router.route(ids)
    order = [i for i in routing.ranking() if not np.isnan(routing.signals[i])][:2]
    kw = model._sampling_kwargs(max_tokens, 0.0, 40, 0.95, 0.05, 0, None, False)
    kw.update(pool=pool._core, selections=[[(order[0], 1.0)], [(order[1], 1.0)]])
    answers = model._run([ids, ids], kw)
    scores = [teacher_forced_mean(model, pool, j, ids, a.tokens, a.finish_reason == "eos")
              for j, a in zip(order, answers)]
    return pool.names[order[1] if scores[1] > scores[0] else order[0]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=24, help="reranked prompts to time")
    ap.add_argument("--stride", type=int, default=7, help="take every n-th in-pool prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--margin", type=float, default=0.5)
    args = ap.parse_args(argv)
    import logo_cpp
    from logo_cpp import default_model

    model = logo_cpp.Model(default_model.base_model_path(), n_ctx=512, n_threads=args.threads)
    files = default_model.adapter_files()
    manifest = default_model.load_manifest()
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    plain = logo_cpp.LoGo(model, pool, k=1)
    reranking = logo_cpp.LoGo(model, pool, k=1, rerank_margin=args.margin)
    items = [it for it in default_model.read_eval_set() if it["task"] in files][::args.stride]
    chosen = []
    for it in items:
        ids = model._prompt_tokens(it["prompt"])
        r = plain.route(ids)
        z = np.sort(r.signals[~np.isnan(r.signals)])[::-1]
        if z[0] - z[1] < args.margin:
            chosen.append((ids, max_tokens_for(manifest, it["task"])))
        if len(chosen) == args.prompts:
            break
    print(f"{len(chosen)} reranked prompts (margin < {args.margin}) of {len(items)} looked at; {args.rounds} rounds, "
          f"{args.threads} thread(s)")
    times = {k: [[] for _ in chosen] for k in ("plain", "before", "after")}
    same = 0
    for rnd in range(args.rounds):
        for p, (ids, n) in enumerate(chosen):
            for kind in (("plain", "before", "after") if (rnd + p) % 2 == 0 else ("after", "before", "plain")):
                t0 = time.perf_counter()
                if kind == "plain":
                    plain.generate(ids, max_tokens=n, temperature=0)
                elif kind == "before":
                    kept_before = before(model, pool, plain, ids, n)
                else:
                    kept_after = reranking.generate(ids, max_tokens=n, temperature=0).routing.rerank["chosen"]
                times[kind][p].append(time.perf_counter() - t0)
            if rnd == 0:
                same += kept_before == kept_after
    med = {k: [statistics.median(t) for t in v] for k, v in times.items()}
    ratio = lambda a, b: statistics.median([x / y for x, y in zip(med[a], med[b])])  # noqa: E731
    for k in ("plain", "before", "after"):
        print(f"  {k:6s} median per prompt {1000 * statistics.median(med[k]):7.1f} ms")
    print(f"  before / plain {ratio('before', 'plain'):.3f}   after / plain {ratio('after', 'plain'):.3f}   "
          f"after / before {ratio('after', 'before'):.3f}   (medians of per-prompt ratios)")
    print(f"  same adapter kept before and after: {same} of {len(chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
