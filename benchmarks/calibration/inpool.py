"""The held-out in-pool prompt set every calibration study of issue 11 scores (sessions 4-6), in one place.

A pool directory (models/pool, models/pool-alt) holds eval.jsonl: held-out prompts of its tasks and of tasks
without an adapter. The studies route only the in-pool ones, split into two halves per task (A: the 1st,
3rd, ... prompt of each task in file order; B: the others) so that a rule chosen on half A is reported on half B.
Their hidden states come from probe_data.probe_set (one cached forward per prompt, every token's state kept at
LAYERS_TOK), sliced here to the in-pool prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explore import pool_adapters
from probe_data import ProbeSet, load_pool_dir, probe_set

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
