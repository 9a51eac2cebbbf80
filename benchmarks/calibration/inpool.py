"""The held-out in-pool prompt set every calibration study of issue 11 scores (sessions 4-6), in one place.

A pool directory (models/pool, models/pool-alt) holds eval.jsonl: held-out prompts of its tasks and of tasks
without an adapter. The studies route only the in-pool ones, split into two halves per task (A: the 1st,
3rd, ... prompt of each task in file order; B: the others) so that a rule chosen on half A is reported on half B.
Their hidden states come from probe_data.probe_set (one cached forward per prompt, every token's state kept at
LAYERS_TOK), sliced here to the in-pool prompts.

The session-6 studies that score choices by task accuracy (format_calibration.py, token_robust.py) also share
their command line (study_arguments), model (open_model), per-pool inputs (load_pool_study) and the greedy
answers to every choice they make (answer_choices, reference_scores).
"""

from __future__ import annotations

import argparse
import json
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explore import pool_adapters
from probe_data import ProbeSet, load_pool_dir, probe_set, read_adapter, read_norm_weights, read_rms_eps

LAYERS_TOK = tuple(range(18, 30))  # blocks whose every token's state explore.py / probe_set cached
POOLS = (Path("models/pool"), Path("models/pool-alt"))


@dataclass
class InPool:
    """One pool's held-out in-pool prompts. ``own`` (P,) int: each prompt's own adapter (index into ``names``);
    ``half`` (P,) int: 1 for half A, 0 for half B; ``ev``: their hidden states (tokens at LAYERS_TOK)."""

    dir: Path
    manifest: dict
    items: list        # every eval item of the pool, in and out of pool
    adapters: list     # [(task name, adapter file)]
    names: list
    keep: list         # indices into items of the in-pool prompts
    kept: list         # those items
    own: np.ndarray
    half: np.ndarray
    ev: ProbeSet

    @property
    def A(self) -> np.ndarray:
        return self.half == 1

    @property
    def B(self) -> np.ndarray:
        return self.half == 0


def halves(tasks: list[str]) -> np.ndarray:
    """(P,) int: 1 for the 1st, 3rd, ... item of each task in order (half A), 0 for the others (half B)."""
    counts: dict = {}
    out = []
    for t in tasks:
        counts[t] = counts.get(t, 0) + 1
        out.append(counts[t] % 2)
    return np.array(out)


def load_inpool(model, pool_dir: Path, cache: Path, token_layers: tuple = LAYERS_TOK) -> InPool:
    """The in-pool prompts of ``pool_dir`` with their cached hidden states (made on first use by ``model``)."""
    manifest, items = load_pool_dir(pool_dir)
    adapters = pool_adapters(pool_dir, manifest)
    names = [n for n, _ in adapters]
    keep = [i for i, it in enumerate(items) if it["task"] in names]
    full = probe_set(model, [it["prompt"] for it in items], cache, "eval", token_layers)
    ev = subset(full, keep)
    kept = [items[i] for i in keep]
    own = np.array([names.index(it["task"]) for it in kept])
    return InPool(pool_dir, manifest, items, adapters, names, keep, kept, own, halves([it["task"] for it in kept]), ev)


def generic_states(model, cache: Path, prompts: list[str] | None = None, token_layers: tuple = LAYERS_TOK) -> ProbeSet:
    """Hidden states of the calibration prompts (default: the library's shipped generic prompts), cached."""
    if prompts is None:
        from logo_cpp import _core

        prompts = list(_core.calibration_prompts())
    return probe_set(model, prompts, cache, "generic", token_layers)


def subset(full: ProbeSet, rows: list[int]) -> ProbeSet:
    """The prompts ``rows`` of ``full`` (with their per-token states when ``full`` has them)."""
    out = ProbeSet([full.prompts[i] for i in rows], full.last[rows], full.mean[rows], full.n_tokens[rows])
    if full.tokens is not None:
        offs = full.offsets()
        out.tokens = np.concatenate([full.tokens[offs[i]:offs[i + 1]] for i in rows])
        out.token_layers = full.token_layers
    return out


def outpool_states(model, pool_dir: Path, cache: Path, token_layers: tuple = LAYERS_TOK) -> tuple[list[int], ProbeSet]:
    """(indices into the pool's eval items, hidden states) of its out-of-pool prompts (tasks with no adapter)."""
    manifest, items = load_pool_dir(pool_dir)
    names = [n for n, _ in pool_adapters(pool_dir, manifest)]
    rows = [i for i, it in enumerate(items) if it["task"] not in names]
    full = probe_set(model, [it["prompt"] for it in items], cache, "eval", token_layers)
    return rows, subset(full, rows)


def study_arguments(doc: str, argv=None) -> argparse.Namespace:
    """A study's command line: --out (its JSON report), --cache (hidden states and generations; default
    benchmarks/calibration/cache), --threads (default 1). ``doc``: the script's docstring (its first line is the
    description)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def open_model(threads: int):
    """(the shipped default model, n_ctx 512, its RMSNorm weights per block, its RMS epsilon)."""
    import logo_cpp
    from logo_cpp import default_model

    path = str(default_model.base_model_path())
    return logo_cpp.Model(path, n_ctx=512, n_threads=threads), read_norm_weights(path), read_rms_eps(path)


@dataclass
class PoolStudy:
    """What a study scores on one pool: its in-pool prompts ``p``, its adapters as read in numpy (``read``, in
    p.adapters' order), and its out-of-pool prompts (``oop``: indices into p.items; ``oev``: their states)."""

    p: InPool
    read: list
    oop: list
    oev: ProbeSet


def load_pool_study(model, pool_dir: Path, cache: Path) -> PoolStudy:
    p = load_inpool(model, pool_dir, cache)
    oop, oev = outpool_states(model, pool_dir, cache)
    return PoolStudy(p, [read_adapter(str(f)) for _, f in p.adapters], oop, oev)


def answer_choices(model, study: PoolStudy, cache: Path, chosen_in, chosen_out):
    """measure.Generations of the pool with every answer the study reads generated (greedy, as measure.py) and
    cached: each in-pool prompt with each adapter some candidate chose for it (``chosen_in``: (P,) adapter
    indices per candidate) and with its own; each out-of-pool prompt with each candidate's choice
    (``chosen_out``: (O,) per candidate) and with the base model."""
    import logo_cpp
    from correctness import scorer
    from measure import Generations

    p, oop = study.p, study.oop
    files = [f for _, f in p.adapters]
    core_pool = logo_cpp.AdapterPool(model, files, names=p.names)
    key = hashlib.sha256(str(p.dir.resolve()).encode()).hexdigest()[:16]
    gens = Generations(model, core_pool, files, cache / f"generations-{key}.json", scorer(None), p.manifest)
    gens.items = p.items
    need = {(p.keep[i], int(c)) for chosen in chosen_in for i, c in enumerate(chosen)}
    need |= {(p.keep[i], int(o)) for i, o in enumerate(p.own)}
    need |= {(oop[i], int(c)) for chosen in chosen_out for i, c in enumerate(chosen)} | {(i, -1) for i in oop}
    gens.need(need)
    core_pool.close()
    return gens


def reference_scores(gens, study: PoolStudy) -> dict:
    """The pool's references: the oracle's task accuracy (each in-pool prompt with its own adapter) on half A,
    half B and all, and the base model's on the out-of-pool prompts."""
    p = study.p
    oracle = np.array([gens.get(p.keep[i], int(o)) for i, o in enumerate(p.own)])
    return {"oracle": {"A": float(oracle[p.A].mean()), "B": float(oracle[p.B].mean()), "all": float(oracle.mean())},
            "base_out_of_pool": float(np.mean([gens.get(i, -1) for i in study.oop]))}


def choice_scores(gens, study: PoolStudy, chosen, chosen_out) -> dict:
    """How one candidate's choices score on the pool: task accuracy (acc_*) and own adapter first (own_*) on
    half A, half B and all in-pool prompts (``chosen``: (P,) adapter indices), and task accuracy out of pool
    (``chosen_out``: (O,))."""
    p = study.p
    acc = np.array([gens.get(p.keep[i], int(c)) for i, c in enumerate(chosen)])
    hit = chosen == p.own
    return {"acc_A": float(acc[p.A].mean()), "acc_B": float(acc[p.B].mean()), "acc_all": float(acc.mean()),
            "own_A": float(hit[p.A].mean()), "own_B": float(hit[p.B].mean()), "own_all": float(hit.mean()),
            "out_of_pool": float(np.mean([gens.get(i, int(c)) for i, c in zip(study.oop, chosen_out)]))}


def chosen_on_half_a(results: dict, candidates: list, width: int) -> str:
    """The studies' rule, written before half B was read: the candidate with the best mean task accuracy on half A
    of models/pool and models/pool-alt (equal weight); ties go to the one listed first. ``results``:
    {candidate: {pool name: choice_scores}}. Prints each candidate's half-A line (names padded to ``width``)."""
    print("\nhalf A only (the rule):")
    mean_a = {}
    for c in candidates:
        r = results[c]
        mean_a[c] = (r["pool"]["acc_A"] + r["pool-alt"]["acc_A"]) / 2
        print(f"  {c:<{width}} accuracy half A: pool {r['pool']['acc_A']:.3f}  pool-alt {r['pool-alt']['acc_A']:.3f}  "
              f"mean {mean_a[c]:.3f}")
    return max(candidates, key=lambda c: (round(mean_a[c], 9), -list(candidates).index(c)))


def print_choice_scores(results: dict, candidates: list, width: int) -> None:
    """One line per candidate and pool: task accuracy A / B / all, own first A / B / all, out of pool (and the
    most frequent misroutes where a study records them)."""
    for c in candidates:
        for name in ("pool", "pool-alt"):
            r = results[c][name]
            misroutes = f"  misroutes {r['misroutes']}" if "misroutes" in r else ""
            print(f"  {c:<{width}} {name:<8} acc {r['acc_A']:.3f} / {r['acc_B']:.3f} / {r['acc_all']:.3f}  own "
                  f"{r['own_A']:.3f} / {r['own_B']:.3f} / {r['own_all']:.3f}  out {r['out_of_pool']:.3f}{misroutes}")


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
