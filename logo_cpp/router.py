"""Routers: LoGo (probe signals, top-k, mixture weights from the signals) and plain baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from . import _core, calibration_cache
from . import rerank as _rerank
from .adapters import AdapterPool
from ._limits import FLOAT32_MAX, INT32_MAX
from .model import Completion, Model, Prompt, check_fold, logprob_kwargs

SIGNALS = ("norm", "entropy")
PROBES = ("base", "all")
CALIBRATIONS = ("none", "zscore", "zscore_sq", "spectral", "frobenius")
# The calibrations that standardise with statistics over the generic prompts (kept in calibration_cache).
_STATISTICAL = ("zscore", "zscore_sq")
DEFAULT_CALIBRATION = "zscore_sq"
POSITIONS = ("last", "mean")
MODULES = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
# The calibrated default's probe site (docs/calibration/README.md): attn_v of the last 8 blocks, chosen on
# half of the held-out prompts of both pools among 1-12 blocks, attn_q / attn_v / both (cost kept <= 8 blocks).
DEFAULT_MODULE = "attn_v"
DEFAULT_BLOCKS = 8
# How the top-k get their mixture weights: "signal" (the paper: proportional to the raw signals) or "softmax"
# (softmax of the calibrated signals at a temperature). The default temperature is the C++ RouterOptions'
# (chosen on half A of both project pools at k = 3, docs/calibration/README.md).
WEIGHTINGS = ("signal", "softmax")
DEFAULT_TEMPERATURE = float(_core.default_mixture_temperature)


def default_position(calibration: str) -> str:
    """Where the probe vector is read when ``position`` is not given: the last prompt token for the paper's
    raw signal (calibration "none"), else the mean over the prompt's tokens (measured best with calibration,
    docs/calibration)."""
    return "last" if calibration == "none" else "mean"


def default_module(calibration: str) -> str:
    """The probed module when ``module`` is not given: the paper's attn_q for calibration "none", else
    DEFAULT_MODULE (attn_v, measured best with calibration, docs/calibration)."""
    return "attn_q" if calibration == "none" else DEFAULT_MODULE


def default_weighting(calibration: str) -> str:
    """The mixture weighting when ``weights`` is not given: the paper's "signal" for calibration "none" (so that
    it is the paper exactly), else "softmax" of the calibrated signals (docs/calibration/README.md)."""
    return "signal" if calibration == "none" else "softmax"


def _check_temperature(temperature) -> float:
    """``temperature`` as a float, or ValueError naming the field: it must be a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise ValueError(f"temperature must be a finite number > 0, got {type(temperature).__name__} {temperature!r}")
    t = float(temperature)
    # The core holds it as float32: the bounds are float32's (a tiny value would round to 0).
    if not 0 < t <= FLOAT32_MAX or np.float32(t) == 0:
        raise ValueError(f"temperature must be a finite number > 0 (float32), got {temperature!r}")
    return t


def default_layers(calibration: str, n_layer: int) -> list[int]:
    """The probed blocks when ``layer`` is not given: the last block for calibration "none" (the paper), else
    the last DEFAULT_BLOCKS blocks (every block of a shallower model), as negative indices, ascending."""
    n = 1 if calibration == "none" else min(DEFAULT_BLOCKS, n_layer)
    return list(range(-n, 0))


@dataclass
class Routing:
    """Which adapters serve one instance, with what weights, and why."""

    method: str
    names: list[str]          # selected adapters, highest signal first
    weights: np.ndarray       # float32, sums to 1
    indices: list[int]        # their positions in the pool
    signals: Optional[np.ndarray] = None   # one per pool adapter, what ranks them (NaN: not scored); None for
                                           # non-probing routers
    raw_signals: Optional[np.ndarray] = None  # the same before calibration (the paper's s_i)
    norms: Optional[np.ndarray] = None      # ||o_i|| summed over the probed blocks (NaN: not scored; Arrow)
    entropies: Optional[np.ndarray] = None  # H_i, mean over the probed blocks; NaN where not scored, for Arrow,
                                            # and for a calibrated norm router (it computes norms only)
    unscored: list[str] = field(default_factory=list)  # adapters without the probe module: never selectable
    signal: Optional[str] = None
    calibration: Optional[str] = None     # how signals were made from raw_signals ("none": they are equal)
    position: Optional[str] = None        # where the probe vector was read: "last" token or "mean" over tokens
    layer: Optional[int] = None           # the last probed block
    layers: Optional[list[int]] = None    # every probed block
    module: Optional[str] = None
    weighting: Optional[str] = None       # how weights were made: "signal" (raw, the paper) or "softmax"
    temperature: Optional[float] = None   # the softmax temperature (None for "signal")
    timings: dict = field(default_factory=dict)
    # LoGo(rerank_margin=...) at generation: {"candidates": top two names, "margin": z_1 - z_2, "reranked": whether
    # their answers were compared, "mean_logprobs": [two floats] or None, "chosen": name}; None otherwise
    rerank: Optional[dict] = None

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
    """Base of all routers: route() picks a mixture per prompt; generate() runs with it.

    A router holds no C++ memory of its own: it uses its model's session and its pool's adapters, so once
    either is closed (Model.close(), AdapterPool.close()) every call raises logo_cpp.ClosedError."""

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
        return self._generate_routed(prompt, self.route(prompt), max_tokens, kwargs)

    def _generate_routed(self, prompt: Prompt, routing: Routing, max_tokens: int, kwargs: dict):
        """Model.generate with ``routing``'s mixture; a Completion (not a stream) carries ``.routing``."""
        out = self.model.generate(prompt, max_tokens=max_tokens, adapters=routing.as_dict(), **kwargs)
        if not kwargs.get("stream"):
            out.routing = routing
        return out

    def generate_batch(self, prompts: Sequence[Prompt], max_tokens: int = 128, **kwargs) -> list[Completion]:
        """Routes each prompt on its own, then decodes all instances together, each with its own mixture:
        one graph evaluation per step for the whole batch. TypeError for a single str or bytes (use generate())."""
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of prompts; for one prompt (a str or bytes) use generate()")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        model = self.model
        ids = [model._prompt_tokens(p) for p in prompts]
        seed = kwargs.pop("seed", None)
        stop = kwargs.pop("stop", None)
        ignore_eos = kwargs.pop("ignore_eos", False)
        fold = check_fold(kwargs.pop("fold", "exact"))
        if fold != "exact":
            raise ValueError(f"fold={fold!r} folds one mixture into the weights, but generate_batch decodes each "
                             "prompt with its own mixture: use generate() per prompt, or fold='exact'")
        sampling = dict(temperature=kwargs.pop("temperature", 0.8), top_k=kwargs.pop("top_k", 40),
                        top_p=kwargs.pop("top_p", 0.95), min_p=kwargs.pop("min_p", 0.05))
        logprobs = logprob_kwargs(kwargs.pop("logprobs", False), kwargs.pop("top_logprobs", 0))
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        run = model._sampling_kwargs(max_tokens, sampling["temperature"], sampling["top_k"], sampling["top_p"],
                                     sampling["min_p"], seed, stop, ignore_eos)  # checked before any routing
        run.update(logprobs)
        routings = self._batch_routings(prompts, ids, max_tokens, stop, ignore_eos)
        run.update(pool=self.pool._core, selections=[list(zip(r.indices, map(float, r.weights))) for r in routings])
        outs = model._run(ids, run)
        for out, routing in zip(outs, routings):
            out.routing = routing
        return outs

    def _batch_routings(self, prompts, ids, max_tokens, stop, ignore_eos) -> list[Routing]:
        """Each prompt's routing for generate_batch (LoGo's rerank needs the batch's generation settings)."""
        return [self.route(p) for p in prompts]

    def _routing(self, indices: Sequence[int], weights: Sequence[float], **extra) -> Routing:
        names = self.pool.names
        return Routing(method=self.method, names=[names[i] for i in indices],
                       weights=np.asarray(weights, dtype=np.float32), indices=list(indices), **extra)


def _layers(model: Model, layer) -> list[int]:
    """``layer`` as a list of block indices (an int, or a sequence of them; negative counts from the end)."""
    layers = [layer] if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) else layer
    try:
        layers = list(layers)
    except TypeError:
        raise ValueError(f"layer must be an int or a sequence of ints, got {layer!r}") from None
    if not layers:
        raise ValueError("layer is an empty sequence; give at least one block")
    for one in layers:
        if isinstance(one, bool) or not isinstance(one, (int, np.integer)):
            raise ValueError(f"layer must be an int or a sequence of ints, got {type(one).__name__} {one!r}")
        if not -model.n_layer <= one < model.n_layer:
            raise ValueError(f"layer {one!r} is out of range for a model of {model.n_layer} blocks "
                             f"(0..{model.n_layer - 1} or -1..-{model.n_layer})")
    blocks = [int(one) % model.n_layer for one in layers]
    if len(set(blocks)) != len(blocks):
        twice = next(b for b in blocks if blocks.count(b) > 1)
        raise ValueError(f"layer names block {twice} more than once ({list(layers)}); give each block once")
    return [int(one) for one in layers]


# The core holds k as int32 (_limits.INT32_MAX); a k above the pool size is capped there, so this bound only
# keeps the binding quiet.


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= INT32_MAX:
        raise ValueError(f"k must be an integer in [1, {INT32_MAX}] (a k above the pool size is capped), got {k!r}")
    return int(k)


def _choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return value


class _ProbeRouter(Router):
    """A router that scores every adapter in one probe pass (the C++ core's route)."""

    _signals: Sequence[str] = ()
    rerank_margin: Optional[float] = None

    @property
    def k(self) -> int:
        """Adapters per prompt. Set later (the chat's /k) it is checked as at construction: ValueError for a
        k outside [1, 2^31 - 1], and for k != 1 on a router given a rerank_margin number (it applies to k = 1);
        with rerank_margin="auto" (LoGo's default) the rerank follows k (on at k = 1, off otherwise)."""
        return self._k

    @k.setter
    def k(self, value: int) -> None:
        value = _check_k(value)
        if getattr(self, "_rerank_auto", False):  # rerank_margin="auto" follows k: on at k = 1, off otherwise
            self.rerank_margin = _rerank.resolve_margin(_rerank.AUTO, value, self.calibration)
        elif self.rerank_margin is not None and value != 1:
            raise ValueError(f"rerank_margin applies to k = 1 only (k is {value})")
        self._k = value

    def __init__(self, model: Model, pool: AdapterPool, k: int, signal: str, probe: str, layer, module: str,
                 calibration: str, position: Optional[str], cache_dir: calibration_cache.CacheSetting = None,
                 weights: Optional[str] = "signal", temperature: Optional[float] = None):
        super().__init__(model, pool)
        self.k = k
        self.signal = _choice("signal", signal, self._signals)
        self.probe = _choice("probe", probe, PROBES)
        self.calibration = _choice("calibration", calibration, CALIBRATIONS)
        self.position = default_position(calibration) if position is None else _choice("position", position, POSITIONS)
        self.weights = default_weighting(calibration) if weights is None else _choice("weights", weights, WEIGHTINGS)
        if temperature is not None and self.weights != "softmax":
            raise ValueError(f"temperature applies to weights='softmax' only (weights is {self.weights!r}); "
                             "give weights='softmax' or leave temperature as None")
        self.temperature = DEFAULT_TEMPERATURE if temperature is None else _check_temperature(temperature)
        # The default module falls back to the paper's attn_q for a pool that adapts no attn_v at the probed
        # blocks (q-only adapters); a module the caller names never changes.
        self._fallback = "attn_q" if module is None and calibration != "none" else ""
        module = default_module(calibration) if module is None else module
        if module not in MODULES:
            raise ValueError(f"unknown or unprobeable module {module!r}; use one of {', '.join(MODULES)}")
        self.module = module
        self.layers = _layers(model, default_layers(calibration, model.n_layer) if layer is None else layer)
        self.layer = self.layers[-1] if layer is None else layer
        # Statistics over the generic prompts persist on disk between processes (None: no disk cache).
        self._disk = calibration_cache.for_model(model, cache_dir) if calibration in _STATISTICAL else None

    def route(self, prompt: Prompt) -> Routing:
        self._require_pool()
        model = self.model
        ids = model._prompt_tokens(prompt)
        with model._lock:
            if self._disk is not None:
                self._disk.load()  # once per model and directory, before the core computes any statistic
            raw = _core.route(model._session, 0, self.pool._core, ids, k=self.k, signal=self.signal,
                              probe=self.probe, layers=self.layers, module=self.module, calibration=self.calibration,
                              position=self.position, fallback_module=self._fallback, weighting=self.weights,
                              temperature=self.temperature)
        if self._disk is not None:
            self._disk.save()  # only when this route computed new statistics
        names = self.pool.names
        scored = raw["scored"]
        return self._routing(
            raw["selected"], raw["weights"], signals=raw["signals"], raw_signals=raw["raw_signals"],
            norms=raw["norms"], entropies=raw["entropies"], unscored=[n for n, s in zip(names, scored) if not s],
            signal=raw["signal"], calibration=raw["calibration"], position=raw["position"], layer=raw["layer"],
            layers=list(raw["layers"]),
            module=raw["module"], weighting=raw["weighting"],
            temperature=self.temperature if raw["weighting"] == "softmax" else None,
            timings={"probe_seconds": raw["probe_seconds"], "calibration_seconds": raw["calibration_seconds"],
                     "select_seconds": raw["select_seconds"]})


class LoGo(_ProbeRouter):
    """LoGo: one probe pass scores every adapter from the hidden state entering block ``layer``, through each
    adapter's LoRA on ``module``; the top ``k`` by calibrated signal form the mixture, weighted as ``weights``
    says.

    ``signal``: "norm" (||o_i||, o_i = (alpha_i / r_i) B_i A_i h) or "entropy" (1 / H(softmax(o_i))), the
    paper's two. ``calibration``: how raw signals are made comparable across adapters before ranking:
    "none" is the paper exactly; "zscore" standardises each adapter's signal with its own mean and std over
    the library's generic unlabeled prompts (``logo_cpp.calibration_prompts()``; no labels, no training);
    "zscore_sq" (the default) does the same for the squared signal s_i^2 (for the norm, the output energy
    ||o_i||^2); "spectral" / "frobenius" divide by the norm of (alpha/r) B A (no data). ``layer``: a block,
    or a sequence of blocks whose calibrated signals are averaged (raw ones summed). ``position``: where the
    probe vector is read, "last" (the last prompt token, the paper's h) or "mean" (over the prompt's tokens
    after BOS). ``layer``, ``module`` and ``position`` left as None follow the calibration: for "none" the
    paper's last block, attn_q and last token (so that it is the paper exactly); otherwise the last 8 blocks
    (``default_layers``), attn_v and the mean over the prompt, the probe site measured best with calibration
    (docs/calibration/README.md); a pool with no attn_v LoRA in those blocks is probed at attn_q instead
    (``Routing.module`` says which).
    ``probe``: "base" (no adapters during the probe) or "all" (every pool adapter active at scale 1).
    ``cache_dir``: where the statistics of "zscore"/"zscore_sq" persist between processes (computing them runs
    the generic prompts through the model once per model: seconds): None uses ``$LOGO_CPP_CACHE_DIR`` or the
    user cache dir (``~/.cache/logo-cpp`` on Linux) unless ``$LOGO_CPP_NO_CACHE`` is set, a path uses that
    directory, False keeps them in this process only (``logo_cpp.calibration_cache``).

    ``weights``: the mixture weights of the k selected adapters S (float32, sum 1, ``Routing.weights``):
    "signal" is the paper's w_i = s_i / sum_{j in S} s_j of the raw signals (docs/logo-method.md, step 6);
    "softmax" is w_i = exp(z_i / T) / sum_{j in S} exp(z_j / T) of the calibrated signals z (``Routing.signals``,
    what ranks them) at ``temperature`` T (> 0; smaller T moves weight to the top adapter, T -> 0 is k = 1,
    large T equal weights). Raw signals are on each adapter's own scale, so the paper's weights let a loud
    adapter that fits badly dominate: at k = 3 on the shipped pool they answer 0.552 of 648 held-out prompts,
    softmax(z / 0.25) 0.716 (k = 1: 0.711). Left as None, ``weights`` follows the calibration ("signal" for "none",
    so that it is the paper exactly, else "softmax") and ``temperature`` is ``DEFAULT_TEMPERATURE`` (chosen
    on half of the held-out prompts of both project pools at k = 3; docs/calibration/README.md).
    ``Routing.weighting`` and ``Routing.temperature`` say what was used.

    ``rerank_margin`` (k = 1 with calibrated signals; default ``"auto"``, None: off): at generation (``generate``,
    ``generate_batch``), when the top two adapters' calibrated signals differ by less than this margin, both answer
    the prompt greedily and the adapter whose answer the model is more confident in (mean log-probability of its
    tokens and of ending there) serves it (``logo_cpp.rerank``; ``Routing.rerank`` says what was compared).
    ``"auto"`` is ``rerank.DEFAULT_RERANK_MARGIN`` (0.5) at k = 1 with calibrated signals and off otherwise (k > 1,
    calibration "none": the paper exactly). ``route`` alone never reranks (it generates nothing). Measured
    (docs/calibration/README.md, sessions 6-8): on the shipped pool it raises k = 1 task accuracy from 0.711 to
    0.738 of 648 held-out prompts (oracle 0.778), and on 519 fresh prompts out of pool it stays above the base
    model; a reranked prompt (about a fifth) costs 1.69x a plain routed generation on these short answers, and
    both candidates' whole greedy answers come before the kept one (a long answer costs two).

    Raises ValueError naming the argument and its choices for a bad ``k``, ``signal``, ``probe``,
    ``calibration``, ``position``, ``layer``, ``module`` or ``weights``; for a ``temperature`` that is not a
    finite number > 0, or one given with weights="signal"; for a ``rerank_margin`` that is not a finite number
    > 0, None or "auto", or a number given with k > 1 or calibration "none"; TypeError for a ``cache_dir`` of another type.
    """

    method = "logo"
    _signals = SIGNALS

    def __init__(self, model: Model, pool: AdapterPool, k: int = 20, signal: str = "norm", probe: str = "base",
                 layer=None, module: Optional[str] = None, calibration: str = DEFAULT_CALIBRATION,
                 position: Optional[str] = None, cache_dir: calibration_cache.CacheSetting = None,
                 weights: Optional[str] = None, temperature: Optional[float] = None,
                 rerank_margin: Union[float, str, None] = _rerank.AUTO):
        super().__init__(model, pool, k, signal, probe, layer, module, calibration, position, cache_dir, weights,
                         temperature)
        self.rerank_margin = _rerank.resolve_margin(rerank_margin, self.k, self.calibration)
        self._rerank_auto = isinstance(rerank_margin, str)  # "auto" (resolve_margin refused any other string)

    def generate(self, prompt: Prompt, max_tokens: int = 128, **kwargs):
        """As Router.generate; with ``rerank_margin``, close top-two routings are reranked first (the reranked
        greedy answer is returned as is when the call is greedy and not streamed)."""
        if self.rerank_margin is None or self.k != 1:  # (k may have been changed since: chat's /k)
            return super().generate(prompt, max_tokens=max_tokens, **kwargs)
        model = self.model
        ids = model._prompt_tokens(prompt)
        model._sampling_kwargs(max_tokens, kwargs.get("temperature", 0.8), kwargs.get("top_k", 40),
                               kwargs.get("top_p", 0.95), kwargs.get("min_p", 0.05), kwargs.get("seed"),
                               kwargs.get("stop"), kwargs.get("ignore_eos", False))  # checked before any work
        asked = logprob_kwargs(kwargs.get("logprobs", False), kwargs.get("top_logprobs", 0))
        routing = self.route(ids)
        answer = _rerank.rerank(model, self.pool, ids, routing, self.rerank_margin, max_tokens, kwargs.get("stop"),
                                kwargs.get("ignore_eos", False), asked["top_logprobs"])
        # The candidates' answers are exact mixtures: with another fold the chosen one generates again.
        if (answer is not None and float(kwargs.get("temperature", 0.8)) == 0.0 and not kwargs.get("stream")
                and check_fold(kwargs.get("fold", "exact")) == "exact"):
            if not asked["logprobs"]:  # measured for the rerank; the caller did not ask for them
                answer.logprobs, answer.eos = None, None
            answer.routing = routing
            return answer
        return self._generate_routed(ids, routing, max_tokens, kwargs)

    def _batch_routings(self, prompts, ids, max_tokens, stop, ignore_eos) -> list[Routing]:
        """With ``rerank_margin`` each prompt is routed and reranked (as generate) before the batch is decoded
        together, with the batch's max_tokens, stop strings and ignore_eos."""
        if self.rerank_margin is None or self.k != 1:
            return super()._batch_routings(prompts, ids, max_tokens, stop, ignore_eos)
        routings = []
        for one in ids:
            r = self.route(one)
            _rerank.rerank(self.model, self.pool, one, r, self.rerank_margin, max_tokens, stop, ignore_eos)
            routings.append(r)
        return routings


class TopOne(LoGo):
    """The single adapter with the highest (calibrated) LoGo signal, at weight 1: the probe's choice alone (no
    confidence rerank; ``LoGo(k=1)`` reranks a close top two at generation by default)."""

    method = "top1"

    def __init__(self, model: Model, pool: AdapterPool, signal: str = "norm", probe: str = "base",
                 layer=None, module: Optional[str] = None, calibration: str = DEFAULT_CALIBRATION,
                 position: Optional[str] = None, cache_dir: calibration_cache.CacheSetting = None):
        super().__init__(model, pool, k=1, signal=signal, probe=probe, layer=layer, module=module,
                         calibration=calibration, position=position, cache_dir=cache_dir, rerank_margin=None)


class Arrow(_ProbeRouter):
    """Arrow-style routing (Ostapenko et al. 2024, "Towards modular LLMs by building and reusing a library of
    LoRAs"; in PEFT as ``ArrowConfig``), per instance: each adapter's prototype at a block is the top right
    singular vector v of its B A on ``module``; its score is |<v, h>| / ||h|| at the probe vector h, summed over
    ``layer`` (default: every block, as Arrow routes in every adapted layer). The top ``k`` get weights
    proportional to their scores. Training-free and data-free; ``calibration`` defaults to "none".
    """

    method = "arrow"
    _signals = ("arrow",)

    def __init__(self, model: Model, pool: AdapterPool, k: int = 1, layer=None, module: str = "attn_q",
                 calibration: str = "none", probe: str = "base", position: str = "last",
                 cache_dir: calibration_cache.CacheSetting = None):
        super().__init__(model, pool, k, "arrow", probe, list(range(model.n_layer)) if layer is None else layer,
                         module, calibration, position, cache_dir)


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
        self.k = _check_k(k)
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


ROUTERS = {"logo": LoGo, "top1": TopOne, "arrow": Arrow, "uniform": Uniform, "random": RandomK, "fixed": Fixed}
