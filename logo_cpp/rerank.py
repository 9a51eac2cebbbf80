"""Confidence rerank of a k = 1 LoGo routing: when the calibrated scores of the top two adapters are close, answer
the prompt greedily with each and keep the adapter whose answer the model is more confident in (the mean
log-probability of the answer's tokens, and of ending there, as the decoder reports them). Label-free and
training-free; a reranked prompt's two greedy answers are decoded together (one batch of two), and when the call is
greedy the kept one is the answer, so the cost is the second sequence of that batch.

Measured on the project's pools (docs/calibration/README.md, session 6; the rule and its margin 0.5 chosen on
half of the held-out prompts of both pools): shipped pool k = 1 task accuracy 0.711 -> 0.738 (oracle 0.778),
held-out half 0.679 -> 0.719; pool-alt 0.565 -> 0.571.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

# The calibrated-score margin z_1 - z_2 under which the top two are reranked (chosen on half A of both pools
# among 0.25, 0.5, 1, 2; about a fifth of the held-out prompts fall under it).
DEFAULT_RERANK_MARGIN = 0.5


def check_margin(value) -> Optional[float]:
    """``rerank_margin`` as a float (None: no rerank), or ValueError naming the field: a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"rerank_margin must be a finite number > 0 or None, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (0 < v < float("inf")):
        raise ValueError(f"rerank_margin must be a finite number > 0 or None, got {value!r}")
    return v


def mean_logprob(answer) -> float:
    """The rerank's confidence in a greedy ``answer`` (a Completion generated with logprobs=True): the mean of its
    tokens' log-probabilities (natural log) and, when it ended at an end-of-generation token, that token's. The
    decoder reports them as it generates (TokenLogprob: log-softmax of the raw logits), so no second pass is
    needed. 0.0 for an empty answer that did not end at EOS."""
    values = [e.logprob for e in answer.logprobs]
    if answer.eos is not None:
        values.append(answer.eos.logprob)
    return float(np.mean(values)) if values else 0.0


def rerank(model, pool, ids: list[int], routing, margin: float, max_tokens: int, stop, ignore_eos: bool,
           top_logprobs: int = 0):
    """Reranks a k = 1 ``routing`` of prompt ``ids`` in place when its top two calibrated signals are closer than
    ``margin``: both answer greedily in one batch of two (``max_tokens``, ``stop``, ``ignore_eos`` as the caller's
    generation, with log-probabilities and ``top_logprobs`` alternatives), and the one with the higher
    mean_logprob is kept (the top one on ties). Sets ``routing.rerank`` (a dict: candidates, margin, reranked,
    mean_logprobs, chosen) and ``routing.timings["rerank_seconds"]``. Returns the chosen adapter's greedy
    Completion (its logprobs filled) when answers were generated, else None."""
    t0 = time.perf_counter()
    order = [i for i in routing.ranking() if not np.isnan(routing.signals[i])][:2]
    info = {"candidates": [pool.names[i] for i in order], "margin": None, "reranked": False,
            "mean_logprobs": None, "chosen": routing.names[0]}
    routing.rerank = info
    if len(order) < 2 or max_tokens == 0:
        return None
    gap = float(routing.signals[order[0]] - routing.signals[order[1]])
    info["margin"] = gap
    if not gap < margin:
        return None
    kw = model._sampling_kwargs(max_tokens, 0.0, 40, 0.95, 0.05, 0, stop, ignore_eos)
    kw.update(pool=pool._core, selections=[[(order[0], 1.0)], [(order[1], 1.0)]], logprobs=True,
              top_logprobs=top_logprobs)
    answers = model._run([ids, ids], kw)
    scores = [mean_logprob(a) for a in answers]
    pick = 1 if scores[1] > scores[0] else 0
    chosen = order[pick]
    routing.names, routing.indices = [pool.names[chosen]], [int(chosen)]
    routing.weights = np.ones(1, dtype=np.float32)
    info.update(reranked=True, mean_logprobs=scores, chosen=pool.names[chosen])
    routing.timings["rerank_seconds"] = time.perf_counter() - t0
    return answers[pick]
