"""Candidate routing signals in numpy, from cached hidden states and the adapters' A/B matrices.

A candidate is (input, position, signal, calibration, layers, modules):

- input: "h" the residual entering the block (the paper's probe vector), "x" the module's actual input
  (RMSNorm(h) * attn_norm weight), "hc"/"xc" the same centred on the generic prompts' mean;
- position: "last" prompt token, "mean" over the prompt's tokens after BOS (the signal of the mean state),
  "xmean" (the signal of the mean over tokens of the module input RMSNorm(h_t) * w: the runtime's "mean"), or
  "tok" (the mean over tokens of each token's signal; norm and arrow only);
- signal: "norm" ||s B A u||, "entropy" 1 / H(softmax(s B A u)), "arrow" |<v, u>| / ||u|| with v the top right
  singular vector of B A (Arrow, Ostapenko et al. 2024);
- calibration (per adapter, per layer and module): "none"; "frobenius" / "spectral" divide by ||s B A||;
  "zscore" standardises with the adapter's mean and std over the generic prompts ("logz": of log s); "zeval" over the evaluation
  prompts themselves (transductive: a bar, not a router); "running" over the generic prompts plus the
  evaluation prompts routed before this one (a fixed shuffled order);
- layers x modules: calibrated per-(layer, module) signals are averaged (raw ones summed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_data import LoraPair, ProbeSet

INPUTS = ("h", "x", "hc", "xc")
SIGNALS = ("norm", "entropy", "arrow")
CALIBRATIONS = ("none", "frobenius", "spectral", "zscore", "logz", "zeval", "running")


@dataclass(frozen=True)
class Candidate:
    signal: str = "norm"
    calibration: str = "none"
    layers: tuple = (-1,)
    modules: tuple = ("attn_q",)
    position: str = "last"
    input: str = "h"

    def label(self) -> str:
        layers = ",".join(str(l) for l in self.layers) if len(self.layers) <= 4 else f"{self.layers[0]}..{self.layers[-1]}"
        extra = "" if self.input == "h" else f" in={self.input}"
        return (f"{self.signal}/{self.calibration} L[{layers}] {'+'.join(self.modules)} {self.position}{extra}")


class Study:
    """Scores every candidate for every (evaluation prompt, adapter); caches per-block raw signals."""

    def __init__(self, adapters: list[dict], evalset: ProbeSet, generic: ProbeSet, norm_weights: dict, eps: float,
                 seed: int = 0):
        self.adapters = adapters
        self.n = len(adapters)
        self.eval = evalset
        self.generic = generic
        self.norm_weights = norm_weights
        self.eps = eps
        self.n_layer = evalset.last.shape[1]
        self.order = np.random.default_rng(seed).permutation(len(evalset.prompts))  # for "running"
        self._raw: dict = {}
        self._proto: dict = {}

    # -- inputs ------------------------------------------------------------------------------------
    def _token_mean_x(self, ps: ProbeSet, layer: int) -> np.ndarray:
        """(P, n_embd): per prompt, the mean over its tokens (after BOS) of RMSNorm(h_t) * w, as the runtime's
        position="mean" probe reads it."""
        t = ps.tokens[:, ps.token_layers.index(layer)].astype(np.float64)
        x = t / np.sqrt(np.mean(t * t, axis=1, keepdims=True) + self.eps) * self.norm_weights[layer]
        return np.add.reduceat(x, ps.offsets()[:-1], axis=0) / ps.n_tokens[:, None]

    def _inputs(self, layer: int, position: str, kind: str):
        if position == "xmean":
            key = ("xmean", layer)
            if key not in self._raw:
                self._raw[key] = (self._token_mean_x(self.eval, layer), self._token_mean_x(self.generic, layer))
            e, g = self._raw[key]
            return e, g
        if position == "tok":
            li = self.eval.token_layers.index(layer)
            e = self.eval.tokens[:, li].astype(np.float64)
            g = self.generic.tokens[:, self.generic.token_layers.index(layer)].astype(np.float64)
        else:
            e = getattr(self.eval, position)[:, layer].astype(np.float64)
            g = getattr(self.generic, position)[:, layer].astype(np.float64)
        if kind in ("x", "xc"):
            w = self.norm_weights[layer]
            e = e / np.sqrt(np.mean(e * e, axis=1, keepdims=True) + self.eps) * w
            g = g / np.sqrt(np.mean(g * g, axis=1, keepdims=True) + self.eps) * w
        if kind in ("hc", "xc"):
            mu = g.mean(axis=0)
            e, g = e - mu, g - mu
        return e, g

    # -- per-block raw signals ---------------------------------------------------------------------
    def _pair(self, i: int, layer: int, module: str) -> LoraPair | None:
        return self.adapters[i]["pairs"].get((layer, module))

    def _prototype(self, i: int, layer: int, module: str):
        key = (i, layer, module)
        if key not in self._proto:
            p = self._pair(i, layer, module)
            # s B A = (Qb Rb)(Ra^T Qa^T): the SVD of the small r x r core gives BA's singular values and vectors.
            qb, rb = np.linalg.qr(p.b)
            qa, ra = np.linalg.qr(p.a.T)
            u, sv, vt = np.linalg.svd(rb @ ra.T)
            v = qa @ vt[0]
            self._proto[key] = (v, abs(p.scale) * sv[0], abs(p.scale) * np.sqrt(np.sum(sv ** 2)))
        return self._proto[key]

    def raw(self, layer: int, module: str, position: str, signal: str, kind: str):
        """(eval (P, N), generic (G, N)) raw signals at one block and module; NaN where not adapted."""
        key = (layer, module, position, signal, kind)
        if key in self._raw:
            return self._raw[key]
        e, g = self._inputs(layer, position, kind)
        if position == "tok":
            out = self._raw_tokens(e, g, layer, module, signal)
            self._raw[key] = out
            return out
        out_e = np.full((len(e), self.n), np.nan)
        out_g = np.full((len(g), self.n), np.nan)
        for i in range(self.n):
            p = self._pair(i, layer, module)
            if p is None:
                continue
            for u, out in ((e, out_e), (g, out_g)):
                if signal == "arrow":
                    v = self._prototype(i, layer, module)[0]
                    out[:, i] = np.abs(u @ v) / np.maximum(np.linalg.norm(u, axis=1), 1e-12)
                    continue
                o = p.scale * (u @ p.a.T) @ p.b.T  # (P, n_out)
                if signal == "norm":
                    out[:, i] = np.linalg.norm(o, axis=1)
                else:
                    q = np.exp(o - o.max(axis=1, keepdims=True))
                    q /= q.sum(axis=1, keepdims=True)
                    out[:, i] = 1.0 / (-np.sum(q * np.log(q + 1e-8), axis=1) + 1e-6)
        self._raw[key] = (out_e, out_g)
        return out_e, out_g

    def per_token(self, layer, module, signal, kind):
        """Every token's raw signal: (eval (T_eval, N), generic (T_generic, N)), cached."""
        key = ("per-token", layer, module, signal, kind)
        if key not in self._raw:
            e, g = self._inputs(layer, "tok", kind)
            self._raw[key] = self._raw_tokens(e, g, layer, module, signal, reduce=False)
        return self._raw[key]

    def _raw_tokens(self, e, g, layer, module, signal, reduce=True):
        """Per-token signals averaged over each prompt's tokens (norm via the r x r Gram of s B)."""
        outs = []
        for u, ps in ((e, self.eval), (g, self.generic)):
            starts = ps.offsets()[:-1]
            out = np.full((len(ps.n_tokens) if reduce else len(u), self.n), np.nan)
            for i in range(self.n):
                p = self._pair(i, layer, module)
                if p is None:
                    continue
                if signal == "arrow":
                    v = self._prototype(i, layer, module)[0]
                    per = np.abs(u @ v) / np.maximum(np.linalg.norm(u, axis=1), 1e-12)
                elif signal == "norm":
                    a = u @ p.a.T
                    gram = (p.scale ** 2) * p.b.T @ p.b
                    per = np.sqrt(np.maximum(np.einsum("tr,rs,ts->t", a, gram, a), 0))
                else:
                    raise ValueError("tok position: norm or arrow only")
                out[:, i] = np.add.reduceat(per, starts) / ps.n_tokens if reduce else per
            outs.append(out)
        return outs[0], outs[1]

    def _calibrate(self, c: Candidate, layer: int, module: str):
        if c.calibration.startswith("ztok"):
            # Each token's signal standardised with the statistics of all generic tokens, then pooled per prompt.
            e, g = self.per_token(layer, module, c.signal, c.input)
            z = (e - g.mean(axis=0)) / (g.std(axis=0) + 1e-12)
            starts = self.eval.offsets()
            pooled = np.empty((len(starts) - 1, self.n))
            for p in range(len(starts) - 1):
                rows = z[starts[p]:starts[p + 1]]
                if c.calibration == "ztok":
                    pooled[p] = rows.mean(axis=0)
                elif c.calibration == "ztokmax":
                    pooled[p] = rows.max(axis=0)
                else:  # ztoktop: the mean of each adapter's 3 largest
                    pooled[p] = np.sort(rows, axis=0)[-3:].mean(axis=0)
            return pooled
        e, g = self.raw(layer, module, c.position, c.signal, c.input)
        if c.calibration == "none":
            return e
        if c.calibration in ("frobenius", "spectral"):
            col = 2 if c.calibration == "frobenius" else 1
            d = np.array([self._prototype(i, layer, module)[col] if self._pair(i, layer, module) else np.nan
                          for i in range(self.n)])
            return e / d
        if c.calibration == "zscore":
            return (e - g.mean(axis=0)) / (g.std(axis=0) + 1e-12)
        if c.calibration == "logz":
            le, lg = np.log(np.maximum(e, 1e-30)), np.log(np.maximum(g, 1e-30))
            return (le - lg.mean(axis=0)) / (lg.std(axis=0) + 1e-12)
        if c.calibration == "zeval":
            return (e - e.mean(axis=0)) / (e.std(axis=0) + 1e-12)
        if c.calibration == "running":
            out = np.empty_like(e)
            s1, s2, n = g.sum(axis=0), (g ** 2).sum(axis=0), len(g)
            for j in self.order:  # statistics of what was seen before, then this input joins them
                mu = s1 / n
                sd = np.sqrt(np.maximum(s2 / n - mu ** 2, 0))
                out[j] = (e[j] - mu) / (sd + 1e-12)
                s1, s2, n = s1 + e[j], s2 + e[j] ** 2, n + 1
            return out
        raise ValueError(c.calibration)

    def scores(self, c: Candidate) -> np.ndarray:
        """(P, N) scores of candidate c (higher routes first); NaN where an adapter has no such module."""
        parts = []
        for layer in c.layers:
            layer = layer % self.n_layer
            for module in c.modules:
                parts.append(self._calibrate(c, layer, module))
        stack = np.stack(parts)
        return np.nansum(stack, axis=0) if c.calibration == "none" else np.nanmean(stack, axis=0)


def routing_metrics(scores: np.ndarray, own: np.ndarray, tasks: list[str], names: list[str]) -> dict:
    """Own adapter ranked first / in the top 3, overall and per task, and which adapter wins most."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    rank = np.sum(s > s[np.arange(len(s)), own][:, None], axis=1)
    first = rank == 0
    wins = np.bincount(np.argmax(s, axis=1), minlength=s.shape[1])
    per_task = {t: float(first[[i for i, x in enumerate(tasks) if x == t]].mean()) for t in dict.fromkeys(tasks)}
    return {"own_first": float(first.mean()), "own_top3": float((rank < 3).mean()), "per_task": per_task,
            "most_chosen": names[int(np.argmax(wins))], "most_chosen_share": float(wins.max() / len(s))}
