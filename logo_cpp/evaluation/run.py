"""Running the comparison: probe every prompt once per signal source, then generate every method's answers in
batches (each sequence of a batch with its own mixture, one graph evaluation per step), then score them.

Protocol (the LoGo paper's, with LoraRetriever's out-of-pool variant):
- "in pool": held-out prompts of tasks that have an adapter in the pool, routed over the whole pool;
- "own adapter removed": the same prompts, each routed with its own task's adapter taken out of the pool;
- "out of pool": held-out prompts of tasks that never had an adapter.
Scores are each task's metric (``logo_cpp.tasks.score``), averaged per task; "overall" is the mean over tasks.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .methods import Method, Selection, SignalSource
from .progress import Progress

SETTINGS = ("in pool", "own adapter removed", "out of pool")


@dataclass
class Item:
    """One held-out prompt. ``own``: pool index of its task's adapter (None for out-of-pool tasks)."""

    index: int
    task: str
    prompt: str
    answer: str
    own: Optional[int]
    max_tokens: int


@dataclass
class Outcome:
    """What one method produced on one prompt."""

    text: str
    score: float
    selection: Selection


@dataclass
class EvalRun:
    """Everything measured: per-prompt signals, outcomes per (setting, method), timings."""

    items: list[Item]
    adapters: list[str]
    signals: dict[str, np.ndarray]                       # signal name -> (n_items, n_adapters)
    outcomes: dict[tuple[str, str], list[tuple[Item, Outcome]]] = field(default_factory=dict)  # (setting, method)
    seconds: dict[str, float] = field(default_factory=dict)
    n_generated: int = 0                                  # distinct (prompt, mixture) generations run


def probe_all(items: Sequence[Item], sources: Sequence[SignalSource], n_adapters: int) -> dict[str, np.ndarray]:
    """Every source's signals for every prompt: {signal name: float32 (n_items, n_adapters)}."""
    out: dict[str, np.ndarray] = {}
    progress = Progress(len(items) * len(sources), "probing")
    for source in sources:
        for item in items:
            for name, values in source.score(item.prompt).items():
                values = np.asarray(values, dtype=np.float32)
                if values.shape != (n_adapters,):
                    raise ValueError(f"signal source {source.name!r} returned {name!r} of shape {values.shape}; "
                                     f"expected ({n_adapters},)")
                out.setdefault(name, np.full((len(items), n_adapters), np.nan, dtype=np.float32))[item.index] = values
            progress.step()
    return out


def selections_for(method: Method, setting: str, items: Sequence[Item], signals: dict[str, np.ndarray],
                   n_adapters: int, seed: int) -> Optional[list[Selection]]:
    """One mixture per prompt of ``setting``, or None when the method does not apply there (the oracle has no
    own adapter once it is removed or for out-of-pool tasks)."""
    if method.kind == "oracle" and setting != "in pool":
        return None
    out = []
    for item in items:
        excluded = item.own if setting == "own adapter removed" else None
        row = {name: values[item.index] for name, values in signals.items()}
        # One generator per (method, prompt): random-k draws do not depend on which other methods ran.
        rng = np.random.default_rng([seed, item.index, zlib.crc32(method.name.encode())])
        out.append(method.select(row, n_adapters, item.own, excluded, rng))
    return out


def _key(selection: Selection) -> tuple:
    return () if selection is None else tuple((int(i), float(w)) for i, w in selection)


def generate_all(model, pool, jobs: dict[tuple[int, tuple], Selection], items: Sequence[Item], batch: int,
                 label: str = "generating") -> dict[tuple[int, tuple], str]:
    """Greedy answers for every distinct (prompt, mixture) job, ``batch`` sequences per graph evaluation.

    Sequences of a batch share max_tokens (jobs are grouped by it) but not mixtures; the base model's jobs
    run in batches of their own. Greedy decoding of a sequence does not depend on its batch-mates.
    """
    groups: dict[tuple[int, bool], list] = {}
    for key, selection in jobs.items():
        item = items[key[0]]
        groups.setdefault((item.max_tokens, selection is None), []).append((key, selection))
    progress = Progress(len(jobs), label)
    texts: dict[tuple[int, tuple], str] = {}
    for (max_tokens, is_base), group in sorted(groups.items(), key=lambda kv: kv[0]):
        group.sort(key=lambda job: job[0][0])  # one prompt's mixtures side by side: equal lengths in a batch
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            prompts = [model._prompt_tokens(items[key[0]].prompt) for key, _ in chunk]
            kwargs = model._sampling_kwargs(max_tokens, 0.0, 40, 0.95, 0.05, 0, None, False)
            if not is_base:
                kwargs.update(pool=pool._core, selections=[[(int(i), float(w)) for i, w in sel] for _, sel in chunk])
            for (key, _), out in zip(chunk, model._run(prompts, kwargs)):
                texts[key] = out.text
            progress.step(len(chunk))
    return texts


def run_comparison(model, pool, items: list[Item], sources: Sequence[SignalSource], methods: Sequence[Method],
                   score: Callable[[str, str, str], float], batch: int = 16, seed: int = 0) -> EvalRun:
    """Probes, generates and scores every (setting, method) on ``items``; a mixture shared by several methods
    (k=1 of two signals that agree, the base model in two settings) is generated once."""
    n = len(pool)
    t0 = time.perf_counter()
    run = EvalRun(items=items, adapters=list(pool.names), signals=probe_all(items, sources, n))
    run.seconds["probe"] = time.perf_counter() - t0

    by_setting = {
        "in pool": [it for it in items if it.own is not None],
        "own adapter removed": [it for it in items if it.own is not None],
        "out of pool": [it for it in items if it.own is None],
    }
    plan: dict[tuple[str, str], list[tuple[Item, Selection]]] = {}
    jobs: dict[tuple[int, tuple], Selection] = {}
    for setting, setting_items in by_setting.items():
        if not setting_items:
            continue
        for method in methods:
            selections = selections_for(method, setting, setting_items, run.signals, n, seed)
            if selections is None:
                continue
            plan[(setting, method.name)] = list(zip(setting_items, selections))
            for item, selection in plan[(setting, method.name)]:
                jobs.setdefault((item.index, _key(selection)), selection)

    t1 = time.perf_counter()
    texts = generate_all(model, pool, jobs, items, batch)
    run.seconds["generate"] = time.perf_counter() - t1
    run.n_generated = len(jobs)
    by_name = {m.name: m for m in methods}
    answers: dict[tuple[int, int], tuple[str, float]] = {}  # the rerank's candidates, shared by its settings
    t2 = time.perf_counter()
    for (setting, method), rows in plan.items():
        outcomes = []
        for item, selection in rows:
            text = texts[(item.index, _key(selection))]
            if by_name[method].rerank_margin is not None:
                text, selection = rerank_outcome(model, pool, by_name[method], setting, item, run.signals, text,
                                                 selection, answers)
            outcomes.append((item, Outcome(text, float(score(item.task, text, item.answer)), selection)))
        run.outcomes[(setting, method)] = outcomes
    if answers:
        run.seconds["rerank"] = time.perf_counter() - t2
        run.n_generated += len(answers)
    return run


def rerank_outcome(model, pool, method: Method, setting: str, item: Item, signals: dict[str, np.ndarray], text: str,
                   selection: Selection, answers: dict) -> tuple[str, Selection]:
    """LoGo's confidence rerank at k = 1 (logo_cpp.rerank, as LoGo.generate runs it): when the top two adapters by
    ``method.signal`` (the own adapter left out in the own-adapter-removed setting) are closer than
    ``method.rerank_margin``, each answers greedily alone with the decoder's log-probabilities and the one with the
    higher mean log-probability serves (the top one on ties); otherwise the top one's answer ``text`` stands.
    ``answers`` caches (prompt, adapter) -> (text, mean log-probability). Returns (text, selection)."""
    from ..rerank import candidate_answers, mean_logprob, more_confident

    s = signals[method.signal][item.index]
    excluded = item.own if setting == "own adapter removed" else None
    order = sorted((i for i in range(len(s)) if np.isfinite(s[i]) and i != excluded), key=lambda i: -float(s[i]))[:2]
    if len(order) < 2 or not float(s[order[0]]) - float(s[order[1]]) < method.rerank_margin:
        return text, selection
    ids = None
    for j in order:
        if (item.index, j) not in answers:
            ids = ids or model._prompt_tokens(item.prompt)
            answer = candidate_answers(model, pool, ids, [j], item.max_tokens)[0]
            answers[(item.index, j)] = (answer.text, mean_logprob(answer))
    pick = order[more_confident([answers[(item.index, j)][1] for j in order])]
    return answers[(item.index, pick)][0], [(pick, 1.0)]
