"""Confidence rerank of a k = 1 LoGo routing: when the calibrated scores of the top two adapters are close, answer
the prompt greedily with each and keep the adapter whose answer the model is more confident in (the mean
log-probability of the answer's tokens, and of ending there, as the decoder reports them: Completion.logprobs
and Completion.eos, the log-softmax of the raw logits). Label-free and training-free. A reranked prompt's two
greedy answers are generated one after the other, each alone with its adapter; when the call is greedy the kept
one is the answer. No teacher-forced pass (session 6 needed two): a reranked prompt costs 1.69x a plain routed
generation, 0.62x what it cost with them (benchmarks/calibration/rerank_cost.py, docs/calibration/rerank-cost.txt);
about +13% per prompt on average with a fifth of prompts reranked.

LoGo's default since session 8 (``rerank_margin="auto"``: on at k = 1 with calibrated signals; None turns it off;
the CLI's `run` too, `--no-rerank`). Measured on the project's pools (docs/calibration/README.md, sessions 6-8; the
rule and its margin 0.5 chosen on half of the held-out prompts of both pools): shipped pool k = 1 task accuracy
0.711 -> 0.738 (oracle 0.778), held-out half 0.679 -> 0.719; pool-alt 0.565 -> 0.571. The runtime keeps the study's
adapter for 126 of the 127 reranked shipped-pool prompts (0.736 with its own choices; rerank_runtime_check.py). On
519 fresh prompts (rerank_fresh.py) out of pool it answers 6 / 16 of 315 (shipped / pool-alt) against the base
model's 4, in pool 155 / 124 of 204 against the plain top adapter's 152 / 124.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

# The calibrated-score margin z_1 - z_2 under which the top two are reranked (chosen on half A of both pools
# among 0.25, 0.5, 1, 2; about a fifth of the held-out prompts fall under it).
DEFAULT_RERANK_MARGIN = 0.5

# ``rerank_margin="auto"`` (LoGo's default since session 8): DEFAULT_RERANK_MARGIN where the rerank applies (k = 1 with
# calibrated signals), off elsewhere (k > 1, calibration "none": the paper's router stays the paper's).
AUTO = "auto"


def check_margin(value, choices: str = "a finite number > 0 or None") -> Optional[float]:
    """``rerank_margin`` as a float (None: no rerank), or ValueError naming the field and ``choices`` (what the
    caller accepts)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"rerank_margin must be {choices}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (0 < v < float("inf")):
        raise ValueError(f"rerank_margin must be {choices}, got {value!r}")
    return v


def resolve_margin(value, k: int, calibration: str) -> Optional[float]:
    """The margin a LoGo router with ``k`` and ``calibration`` reranks under: ``"auto"`` is DEFAULT_RERANK_MARGIN at
    k = 1 with calibrated signals and None (off) otherwise; None is off; a number is checked (check_margin) and
    needs k = 1 and calibrated signals. Raises ValueError naming rerank_margin and its choices (a finite number
    > 0, None, "auto"), or saying why a number does not apply."""
    choices = f"a finite number > 0, None (off) or {AUTO!r}"
    if isinstance(value, str):
        if value != AUTO:
            raise ValueError(f"rerank_margin must be {choices}, got {value!r}")
        return DEFAULT_RERANK_MARGIN if k == 1 and calibration != "none" else None
    margin = check_margin(value, choices)
    if margin is not None and k != 1:
        raise ValueError(f"rerank_margin applies to k = 1 only (k is {k})")
    if margin is not None and calibration == "none":
        raise ValueError("rerank_margin needs calibrated signals (calibration is 'none': raw signals are on each "
                         "adapter's own scale, so their margin means nothing)")
    return margin


def mean_logprob(answer) -> float:
    """The rerank's confidence in a greedy ``answer`` (a Completion generated with logprobs=True): the mean of its
    tokens' log-probabilities (natural log) and, when it ended at an end-of-generation token, that token's. The
    decoder reports them as it generates (TokenLogprob: log-softmax of the raw logits), so no second pass is
    needed. 0.0 for an empty answer that did not end at EOS."""
    values = [e.logprob for e in answer.logprobs]
    if answer.eos is not None:
        values.append(answer.eos.logprob)
    return float(np.mean(values)) if values else 0.0


def candidate_answers(model, pool, ids: list[int], adapters: list[int], max_tokens: int, stop=None,
                      ignore_eos: bool = False, top_logprobs: int = 0) -> list:
    """Each of ``adapters`` (pool indices) answers prompt ``ids`` greedily alone at weight 1 (``max_tokens``,
    ``stop``, ``ignore_eos``), with the decoder's log-probabilities: one Completion per adapter, in order."""
    kw = model._sampling_kwargs(max_tokens, 0.0, 40, 0.95, 0.05, 0, stop, ignore_eos)
    kw.update(pool=pool._core, logprobs=True, top_logprobs=top_logprobs)
    # Each candidate answers alone with its adapter (not both in one batch of two): on a quantized base a batch of
    # per-sequence mixtures computes each adapter's pair in another type than one adapter alone does, and moved a
    # token's log-probability by up to 0.2 (docs/calibration/README.md, session 7); alone, the decoder's values are
    # the teacher-forced ones the rule was chosen with. Each prompt is prefilled on its own either way, so this
    # costs only the (few) decode steps of the second answer.
    return [model._run([ids], dict(kw, selections=[[(int(j), 1.0)]]))[0] for j in adapters]


def more_confident(scores: list[float]) -> int:
    """The rerank's choice among candidates' mean_logprob ``scores`` (the first, the probe's top, on ties): the
    index of the highest."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def top_two(routing) -> tuple[list[int], Optional[float]]:
    """(pool indices of the two best calibrated signals, best first; their margin z_1 - z_2), or (fewer, None)
    when fewer than two adapters were scored."""
    order = [int(i) for i in routing.ranking() if not np.isnan(routing.signals[i])][:2]
    return order, (float(routing.signals[order[0]] - routing.signals[order[1]]) if len(order) == 2 else None)


def at_generation(routing, names, margin: Optional[float]) -> Optional[dict]:
    """What the rerank will do when this k = 1 ``routing`` generates (``route`` generates nothing, so it only
    says): {"margin_limit": margin, "candidates": top two names, "margin": z_1 - z_2, "would_rerank": bool};
    None when ``margin`` is None (no rerank) or fewer than two adapters were scored."""
    if margin is None:  # (routers without signals, e.g. Uniform, have no ranking to read)
        return None
    order, gap = top_two(routing)
    if gap is None:
        return None
    return {"margin_limit": margin, "candidates": [names[i] for i in order], "margin": gap,
            "would_rerank": bool(gap < margin)}


def rerank(model, pool, ids: list[int], routing, margin: float, max_tokens: int, stop, ignore_eos: bool,
           top_logprobs: int = 0):
    """Reranks a k = 1 ``routing`` of prompt ``ids`` in place when its top two calibrated signals are closer than
    ``margin``: each answers greedily alone (``max_tokens``, ``stop``, ``ignore_eos`` as the caller's generation,
    with log-probabilities and ``top_logprobs`` alternatives), and the one with the higher
    mean_logprob is kept (the top one on ties). Sets ``routing.rerank`` (a dict: candidates, margin, reranked,
    mean_logprobs, chosen) and ``routing.timings["rerank_seconds"]``. Returns the chosen adapter's greedy
    Completion (its logprobs filled) when answers were generated, else None."""
    t0 = time.perf_counter()
    order, gap = top_two(routing)
    info = {"candidates": [pool.names[i] for i in order], "margin": None, "reranked": False,
            "mean_logprobs": None, "chosen": routing.names[0]}
    routing.rerank = info
    if len(order) < 2 or max_tokens == 0:
        return None
    info["margin"] = gap
    if not gap < margin:
        return None
    answers = candidate_answers(model, pool, ids, order, max_tokens, stop, ignore_eos, top_logprobs)
    scores = [mean_logprob(a) for a in answers]
    pick = more_confident(scores)
    chosen = order[pick]
    routing.names, routing.indices = [pool.names[chosen]], [int(chosen)]
    routing.weights = np.ones(1, dtype=np.float32)
    info.update(reranked=True, mean_logprobs=scores, chosen=pool.names[chosen])
    routing.timings["rerank_seconds"] = time.perf_counter() - t0
    return answers[pick]
