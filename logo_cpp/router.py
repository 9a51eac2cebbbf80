"""Routers: LoGo (probe signals, top-k, weights proportional to the signals) and plain baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from . import _core
from .adapters import AdapterPool
from .model import Completion, Model, Prompt

SIGNALS = ("norm", "entropy")
PROBES = ("base", "all")


@dataclass
class Routing:
    """Which adapters serve one instance, with what weights, and why."""

    method: str
    names: list[str]          # selected adapters, highest signal first
    weights: np.ndarray       # float32, sums to 1
    indices: list[int]        # their positions in the pool
    signals: Optional[np.ndarray] = None   # one per pool adapter (NaN: not scored); None for non-probing routers
    norms: Optional[np.ndarray] = None
    entropies: Optional[np.ndarray] = None
    unscored: list[str] = field(default_factory=list)  # adapters without the probe module: never selectable
    signal: Optional[str] = None
    layer: Optional[int] = None
    module: Optional[str] = None
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights)}

    def ranking(self) -> list[int]:
        """Pool positions by signal, highest first; unscored adapters last; ties keep pool order."""
        if self.signals is None:
            raise ValueError(f"the {self.method} router computes no signals to rank by")
        return [int(i) for i in np.argsort(-np.nan_to_num(self.signals, nan=-np.inf), kind="stable")]

    def __str__(self) -> str:
        return ", ".join(f"{n} {w:.2f}" for n, w in zip(self.names, self.weights))


class Router:
    """Base of all routers: route() picks a mixture per prompt; generate() runs with it."""

    method = "router"

    def __init__(self, model: Model, pool: AdapterPool):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a logo_cpp.Model, got {type(model).__name__}")
        if not isinstance(pool, AdapterPool):
            raise TypeError(f"pool must be a logo_cpp.AdapterPool, got {type(pool).__name__}")
        if pool.model is not model:
            raise ValueError("the pool was loaded for another Model")
        self.model = model
        self.pool = pool

    def _require_pool(self) -> None:
        if len(self.pool) == 0:
            raise ValueError("the adapter pool is empty")

    def route(self, prompt: Prompt) -> Routing:
        raise NotImplementedError

    def generate(self, prompt: Prompt, max_tokens: int = 128, **kwargs):
        """Routes ``prompt``, then generates with the chosen mixture; the Completion carries ``.routing``.
        Keyword arguments are Model.generate's (temperature, top_k, ..., stream)."""
        routing = self.route(prompt)
        if kwargs.get("stream"):
            return self.model.generate(prompt, max_tokens=max_tokens, adapters=routing.as_dict(), **kwargs)
        out = self.model.generate(prompt, max_tokens=max_tokens, adapters=routing.as_dict(), **kwargs)
        out.routing = routing
        return out

    def generate_batch(self, prompts: Sequence[Prompt], max_tokens: int = 128, **kwargs) -> list[Completion]:
        """Routes each prompt on its own, then decodes all instances together, each with its own mixture:
        one graph evaluation per step for the whole batch."""
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        routings = [self.route(p) for p in prompts]
        model = self.model
        ids = [model._prompt_tokens(p) for p in prompts]
        seed = kwargs.pop("seed", None)
        stop = kwargs.pop("stop", None)
        ignore_eos = kwargs.pop("ignore_eos", False)
        sampling = dict(temperature=kwargs.pop("temperature", 0.8), top_k=kwargs.pop("top_k", 40),
                        top_p=kwargs.pop("top_p", 0.95), min_p=kwargs.pop("min_p", 0.05))
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        run = model._sampling_kwargs(max_tokens, sampling["temperature"], sampling["top_k"], sampling["top_p"],
                                     sampling["min_p"], seed, stop, ignore_eos)
        run.update(pool=self.pool._core, selections=[list(zip(r.indices, map(float, r.weights))) for r in routings])
        outs = model._run(ids, run)
        for out, routing in zip(outs, routings):
            out.routing = routing
        return outs

    def _routing(self, indices: Sequence[int], weights: Sequence[float], **extra) -> Routing:
        names = self.pool.names
        return Routing(method=self.method, names=[names[i] for i in indices],
                       weights=np.asarray(weights, dtype=np.float32), indices=list(indices), **extra)


class LoGo(Router):
    """LoGo: one probe pass scores every adapter from the hidden state entering block ``layer`` at the
    last prompt token, through each adapter's LoRA on ``module``; the top ``k`` get weights s_i / sum(s).

    ``signal``: "norm" (||o_i||) or "entropy" (1 / H(softmax(o_i))). ``probe``: "base" (no adapters
    during the probe) or "all" (every pool adapter active at scale 1 during the probe).
    """

    method = "logo"

    def __init__(self, model: Model, pool: AdapterPool, k: int = 20, signal: str = "norm", probe: str = "base",
                 layer: int = -1, module: str = "attn_q"):
        super().__init__(model, pool)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}; use one of {', '.join(SIGNALS)}")
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
        if not isinstance(layer, int) or not -model.n_layer <= layer < model.n_layer:
            raise ValueError(f"layer {layer!r} is out of range for a model of {model.n_layer} blocks "
                             f"(0..{model.n_layer - 1} or -1..-{model.n_layer})")
        modules = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
        if module not in modules:
            raise ValueError(f"unknown or unprobeable module {module!r}; use one of {', '.join(modules)}")
        self.k, self.signal, self.probe, self.layer, self.module = k, signal, probe, layer, module

    def route(self, prompt: Prompt) -> Routing:
        self._require_pool()
        model = self.model
        ids = model._prompt_tokens(prompt)
        with model._lock:
            raw = _core.route(model._session, 0, self.pool._core, ids, k=self.k, signal=self.signal,
                              probe=self.probe, layer=self.layer, module=self.module)
        names = self.pool.names
        scored = raw["scored"]
        return self._routing(
            raw["selected"], raw["weights"], signals=raw["signals"], norms=raw["norms"],
            entropies=raw["entropies"], unscored=[n for n, s in zip(names, scored) if not s],
            signal=self.signal, layer=raw["layer"], module=self.module,
            timings={"probe_seconds": raw["probe_seconds"], "select_seconds": raw["select_seconds"]})


class TopOne(LoGo):
    """The single adapter with the highest LoGo signal, at weight 1."""

    method = "top1"

    def __init__(self, model: Model, pool: AdapterPool, signal: str = "norm", probe: str = "base",
                 layer: int = -1, module: str = "attn_q"):
        super().__init__(model, pool, k=1, signal=signal, probe=probe, layer=layer, module=module)


class Uniform(Router):
    """Every adapter of the pool, equal weights (a uniform merge)."""

    method = "uniform"

    def route(self, prompt: Prompt) -> Routing:
        self._require_pool()
        n = len(self.pool)
        return self._routing(range(n), [1.0 / n] * n)


class RandomK(Router):
    """k adapters drawn at random (seeded, reproducible per router), equal weights."""

    method = "random"

    def __init__(self, model: Model, pool: AdapterPool, k: int = 20, seed: int = 0):
        super().__init__(model, pool)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self._rng = np.random.default_rng(seed)

    def route(self, prompt: Prompt) -> Routing:
        self._require_pool()
        n = len(self.pool)
        k = min(self.k, n)
        picked = sorted(int(i) for i in self._rng.choice(n, size=k, replace=False))
        return self._routing(picked, [1.0 / k] * k)


class Fixed(Router):
    """The same given mixture {"name": weight} for every prompt (weights normalised to sum 1)."""

    method = "fixed"

    def __init__(self, model: Model, pool: AdapterPool, mixture: Mapping[str, float]):
        super().__init__(model, pool)
        if not mixture:
            raise ValueError("mixture must name at least one adapter")
        total = float(sum(mixture.values()))
        if not np.isfinite(total) or total <= 0:
            raise ValueError("mixture weights must be finite with a positive sum")
        self.mixture = {name: float(w) / total for name, w in mixture.items()}
        for name in self.mixture:
            pool.index(name)  # raises KeyError naming the adapter

    def route(self, prompt: Prompt) -> Routing:
        self._require_pool()
        indices = [self.pool.index(n) for n in self.mixture]
        return self._routing(indices, list(self.mixture.values()))


ROUTERS = {"logo": LoGo, "top1": TopOne, "uniform": Uniform, "random": RandomK, "fixed": Fixed}
