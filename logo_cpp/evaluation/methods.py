"""The methods `logo-cpp eval` compares, as one table: each entry turns one prompt's signals into a mixture.

A *signal source* scores every pool adapter for a prompt in one call (LoGo's probe gives the raw norm and
entropy signals together); it runs once per prompt and serves every method and k that ranks by its signals.
A *method* is a row of the results table: the base model, the oracle (each prompt's own adapter), a uniform
merge, random-k, or the top-k adapters by one signal with weights from that signal.

To add a router to the comparison, give ``logo_cpp.evaluate`` a SignalSource factory that returns its
per-adapter scores (SOURCES) and one RouterEntry (ROUTERS), which becomes a row per k. Sources must score each
adapter independently of which other adapters are in the pool: the "own adapter removed" protocol then removes
an adapter by excluding it from the ranking, which is what re-routing over the smaller pool would give (true of
LoGo's raw signals with probe="base", and of per-adapter calibrations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# A mixture as (pool index, weight) pairs; None is the base model (no adapters).
Selection = Optional[list[tuple[int, float]]]

KINDS = ("base", "oracle", "uniform", "random", "top-k")
WEIGHTINGS = ("proportional", "uniform", "softmax")


@dataclass(frozen=True)
class SignalSource:
    """Scores of every pool adapter for one prompt.

    ``score(prompt)`` returns {signal name: array of shape (n_adapters,)}; NaN marks an adapter the source
    cannot score (it is never selected). Higher is better.
    """

    name: str
    score: Callable[[str], dict[str, np.ndarray]]


def default_calibration() -> Optional[str]:
    """``logo_cpp.router.DEFAULT_CALIBRATION`` (how logo_cpp.LoGo calibrates signals unless told otherwise), or
    None where the router has no calibration (the paper's raw signals only)."""
    from .. import router

    return getattr(router, "DEFAULT_CALIBRATION", None)


def logo_source(model, pool, probe: str = "base", layer: int = -1, module: str = "attn_q") -> SignalSource:
    """LoGo's signals for every pool adapter:
    - raw, as the paper defines them (logo-method.md), from one probe of the whole pool at the last prompt
      token: "logo-norm" s_i = ||o_i|| and "logo-entropy" s_i = 1 / (H(softmax(o_i)) + 1e-6);
    - where the router calibrates (default_calibration() is not None or "none"), the calibrated router's own
      probe per signal kind (its default probe site: blocks, module and position): "logo-<kind>-<calibration>",
      what it ranks (and by default weights) by, and "logo-<kind>-<calibration>-raw", the raw signals at its
      position (what weights="signal" weights by).
    All float32 as the C++ router computes them, so the selections and weights are LoGo's own, bit for bit."""
    from ..router import LoGo

    calibration = default_calibration()
    raw = {} if calibration is None else {"calibration": "none"}
    paper = LoGo(model, pool, k=len(pool), signal="norm", probe=probe, layer=layer, module=module, **raw)
    # The calibrated rows are LoGo as users get it: its default probe site (blocks, module, position).
    calibrated = {} if calibration in (None, "none") else {
        kind: LoGo(model, pool, k=len(pool), signal=kind, probe=probe, calibration=calibration)
        for kind in ("norm", "entropy")}

    def score(prompt: str) -> dict[str, np.ndarray]:
        r = paper.route(prompt)
        inverse_entropy = (1.0 / (r.entropies.astype(np.float64) + 1e-6)).astype(np.float32)
        out = {"logo-norm": r.norms.astype(np.float32), "logo-entropy": inverse_entropy}
        for kind, router in calibrated.items():
            c = router.route(prompt)
            out[f"logo-{kind}-{calibration}"] = np.asarray(c.signals, dtype=np.float32)
            out[f"logo-{kind}-{calibration}-raw"] = np.asarray(c.raw_signals, dtype=np.float32)
        return out

    return SignalSource("logo", score)


def arrow_source(model, pool) -> SignalSource:
    """Arrow's per-adapter scores (``logo_cpp.Arrow``, Ostapenko et al. 2024: |<v_i, h>| / ||h|| summed over
    every block, v_i the top right singular vector of adapter i's B A on the probe module) as "arrow"; the
    Arrow router weights the chosen adapters by them too."""
    from ..router import Arrow

    router = Arrow(model, pool, k=len(pool))

    def score(prompt: str) -> dict[str, np.ndarray]:
        return {"arrow": np.asarray(router.route(prompt).signals, dtype=np.float32)}

    return SignalSource("arrow", score)


@dataclass(frozen=True)
class Method:
    """One row of the results table.

    kind: "base" (no adapters), "oracle" (the prompt's own adapter at weight 1), "uniform" (every adapter of
    the pool, equal weights), "random" (k adapters drawn per prompt, equal weights), or "top-k" (the k adapters
    with the highest ``signal``; k=None takes every scored adapter) weighted by ``weighting``:
    "proportional" w_i = s_i / sum_S s_j (LoGo, paper step 6), "uniform", or "softmax" over the selected s_i,
    w_i = exp(s_i / T) / sum_S exp(s_j / T) at ``temperature`` T (LoGo's weights="softmax"), where s is
    ``weight_signal`` when given (a router may rank by one signal and weight by another, e.g. rank by a
    calibrated signal and weight by the raw one), else ``signal``.
    """

    name: str
    kind: str
    signal: Optional[str] = None
    k: Optional[int] = None
    weighting: str = "proportional"
    weight_signal: Optional[str] = None
    temperature: float = 1.0
    # k = 1 only: LoGo's confidence rerank (logo_cpp.rerank) of a top two closer than this in ``signal``; the
    # comparison (run.py, rerank_outcome) generates both candidates' answers and keeps the more confident one.
    rerank_margin: Optional[float] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "top-k" and not self.signal:
            raise ValueError(f"method {self.name!r}: a top-k method names the signal it ranks by")
        if self.kind == "random" and not self.k:
            raise ValueError(f"method {self.name!r}: random needs k")
        if self.rerank_margin is not None and (self.kind != "top-k" or self.k != 1):
            raise ValueError(f"method {self.name!r}: a rerank applies to top-k at k = 1")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"method {self.name!r}: unknown weighting {self.weighting!r}; "
                             f"use one of {', '.join(WEIGHTINGS)}")

    def select(self, signals: dict[str, np.ndarray], n_adapters: int, own: Optional[int],
               excluded: Optional[int], rng: np.random.Generator) -> Selection:
        """The mixture for one prompt. ``own``: the prompt's own adapter (None when its task has none);
        ``excluded``: an adapter removed from the pool for this prompt (the own-adapter-removed protocol)."""
        allowed = [i for i in range(n_adapters) if i != excluded]
        if self.kind == "base":
            return None
        if self.kind == "oracle":
            if own is None or own == excluded:
                raise ValueError(f"method {self.name!r} needs the prompt's own adapter in the pool")
            return [(own, 1.0)]
        if self.kind == "uniform":
            return [(i, 1.0 / len(allowed)) for i in allowed]
        if self.kind == "random":
            k = min(self.k, len(allowed))
            picked = sorted(int(i) for i in rng.choice(allowed, size=k, replace=False))
            return [(i, 1.0 / k) for i in picked]
        weights = signals[self.weight_signal] if self.weight_signal else None
        return top_k(signals[self.signal], self.k, excluded, self.weighting, weights, self.temperature)


def top_k(signal: np.ndarray, k: Optional[int], excluded: Optional[int] = None, weighting: str = "proportional",
          weight_values: Optional[np.ndarray] = None, temperature: float = 1.0) -> list[tuple[int, float]]:
    """The k highest scored adapters (ties keep pool order, NaN never chosen) and their weights from
    ``weight_values`` (default: ``signal``), computed as cpp/src/router.cpp does: "proportional"
    float32(v_i / sum_S v_j) with the sum in float64, equal weights when the sum is not positive; "softmax"
    float32(exp((v_i - max v) / T) / sum) in float64 (router.cpp softmax_weights)."""
    s = np.asarray(signal, dtype=np.float32)
    candidates = [i for i in range(len(s)) if np.isfinite(s[i]) and i != excluded]
    order = sorted(candidates, key=lambda i: -float(s[i]))  # sorted() is stable: ties keep pool order
    chosen = order[: len(order) if k is None else k]
    if not chosen:
        return []
    v = s if weight_values is None else np.asarray(weight_values, dtype=np.float32)
    values = np.array([float(v[i]) for i in chosen])
    if weighting == "proportional":
        total = float(np.sum(values))
        weights = [float(np.float32(v / total)) for v in values] if total > 0 else [1.0 / len(chosen)] * len(chosen)
    elif weighting == "softmax":
        e = np.exp((values - values.max()) / float(np.float32(temperature)))
        weights = [float(np.float32(x)) for x in e / e.sum()]
    else:
        weights = [1.0 / len(chosen)] * len(chosen)
    return list(zip(chosen, weights))


@dataclass(frozen=True)
class RouterEntry:
    """One router of the comparison table: the signal source it probes with (a name in the sources given to
    ``expand``), the signal it ranks by, and how it weights the chosen adapters. It becomes one row per k."""

    label: str                        # "LoGo-norm"
    source: str                       # key of its SignalSource factory
    signal: str                       # the signal name the source returns and the router ranks by
    weighting: str = "proportional"
    weight_signal: Optional[str] = None
    temperature: float = 1.0          # softmax only
    calibrated: bool = False          # LoGo as users get it: --mixture-weights / --mixture-temperature apply
    rerank_margin: Optional[float] = None  # LoGo's default at k = 1: one more row, "k=1 + rerank"

    @property
    def key(self) -> str:
        """The name `logo-cpp eval --routers` takes: the label in lower case, spaces as dashes."""
        return self.label.lower().replace(" ", "-")

    def methods(self, ks: Sequence[Optional[int]]) -> list[Method]:
        out = []
        for k in ks:
            label = "all" if k is None else f"{k} (top-1)" if k == 1 else str(k)
            out.append(Method(f"{self.label} k={label}", "top-k", signal=self.signal, k=k, weighting=self.weighting,
                              weight_signal=self.weight_signal, temperature=self.temperature))
            if k == 1 and self.rerank_margin is not None:
                out.append(Method(f"{self.label} k=1 + rerank {self.rerank_margin:g} (default)", "top-k",
                                  signal=self.signal, k=1, weighting=self.weighting, weight_signal=self.weight_signal,
                                  temperature=self.temperature, rerank_margin=self.rerank_margin))
        return out


def baselines(random_k: int = 3) -> list[Method]:
    """The paper's comparison points: the base model, the oracle (each prompt's own adapter), a uniform merge
    of the whole pool and random-k."""
    return [Method("base", "base"), Method("oracle (own adapter)", "oracle"),
            Method("uniform merge", "uniform"), Method(f"random k={random_k}", "random", k=random_k)]
