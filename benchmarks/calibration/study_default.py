"""Session-4 study: candidate DEFAULT routers (zscore at the token-mean position) on both pools, chosen on one
half of the held-out prompts and reported on the other half and on both pools.

    python benchmarks/calibration/study_default.py --model <base.gguf> --out docs/calibration/default-study.json

Uses the cached hidden states of explore.py (blocks 18-29 keep every token's state). Questions:
- does centring the module input on the generic prompts' mean, s_i = ||s B_i A_i (x - xbar)||, help?
- attn_q, attn_v or both (mean of the per-(block, module) z-scores)?
- aggregation over blocks: mean of per-block z-scores vs the z-score of the summed signal, the median, ranks;
  the z-score of s, of s^2 (the output energy) or of log s; robust (median/MAD) statistics?
- how many of the last blocks?
Halves: within each task, the 1st, 3rd, ... held-out prompt form half A, the others half B. The default is
chosen on half A of both pools (the best mean own-first among candidates of at most 8 blocks, the cost bound)
and reported on half B and on all prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inpool import POOLS, generic_states, load_inpool  # noqa: E402
from probe_data import ProbeSet, read_adapter, read_norm_weights, read_rms_eps  # noqa: E402


def token_mean_x(ps: ProbeSet, layer: int, w: np.ndarray, eps: float) -> np.ndarray:
    """(P, n_embd): the mean over each prompt's tokens (after BOS) of RMSNorm(h_t) * w (the runtime's "mean")."""
    t = ps.tokens[:, ps.token_layers.index(layer)].astype(np.float64)
    x = t / np.sqrt(np.mean(t * t, axis=1, keepdims=True) + eps) * w
    return np.add.reduceat(x, ps.offsets()[:-1], axis=0) / ps.n_tokens[:, None]


class Signals:
    """Raw norm signals ||s B A u|| per (layer, module, centred) for eval and generic prompts, (P, N)."""

    def __init__(self, pairs, ev, gen, nw, eps):
        self.pairs, self.ev, self.gen, self.nw, self.eps = pairs, ev, gen, nw, eps
        self.n = len(pairs)
        self._x, self._s = {}, {}

    def x(self, layer):
        if layer not in self._x:
            self._x[layer] = (token_mean_x(self.ev, layer, self.nw[layer], self.eps),
                              token_mean_x(self.gen, layer, self.nw[layer], self.eps))
        return self._x[layer]

    def raw(self, layer, module, centred):
        key = (layer, module, centred)
        if key not in self._s:
            e, g = self.x(layer)
            if centred:
                mu = g.mean(axis=0)
                e, g = e - mu, g - mu
            oe, og = np.full((len(e), self.n), np.nan), np.full((len(g), self.n), np.nan)
            for i, pairs in enumerate(self.pairs):
                p = pairs.get((layer, module))
                if p is None:
                    continue
                oe[:, i] = np.linalg.norm(p.scale * (e @ p.a.T) @ p.b.T, axis=1)
                og[:, i] = np.linalg.norm(p.scale * (g @ p.a.T) @ p.b.T, axis=1)
            self._s[key] = (oe, og)
        return self._s[key]

    def scores(self, layers, modules, centred, agg):
        """(P, N) scores. agg: how per-(block, module) signals become one score:
        "meanz" mean of z-scores of s (the runtime's zscore); "sqz" mean of z-scores of s^2 (zscore_sq);
        "logz" of log s; "medz" the median (not the mean) of the z-scores; "robz" median/MAD instead of
        mean/std; "stdz" each block's z standardised across adapters first; "rank" the mean rank across
        adapters; "zsum" per module the z-score of the signal summed over blocks."""
        if agg == "zsum":
            zs = []
            for m in modules:
                e = sum(np.nan_to_num(self.raw(l, m, centred)[0]) for l in layers)
                g = sum(np.nan_to_num(self.raw(l, m, centred)[1]) for l in layers)
                zs.append((e - g.mean(0)) / (g.std(0) + 1e-12))
            return np.mean(np.stack(zs), axis=0)
        f = {"sqz": np.square, "logz": lambda a: np.log(np.maximum(a, 1e-30))}.get(agg, lambda a: a)
        zs = []
        for l in layers:
            for m in modules:
                e, g = (f(x) for x in self.raw(l, m, centred))
                if agg == "robz":
                    med = np.median(g, 0)
                    zs.append((e - med) / (1.4826 * np.median(np.abs(g - med), 0) + 1e-12))
                else:
                    zs.append((e - g.mean(0)) / (g.std(0) + 1e-12))
        z = np.stack(zs)
        if agg == "medz":
            return np.nanmedian(z, axis=0)
        if agg == "stdz":
            z = (z - np.nanmean(z, 2, keepdims=True)) / (np.nanstd(z, 2, keepdims=True) + 1e-12)
        if agg == "rank":
            z = np.argsort(np.argsort(np.where(np.isnan(z), -np.inf, z), 2), 2).astype(float)
        return np.nanmean(z, axis=0)


AGGS = ("meanz", "sqz", "logz", "medz", "robz", "stdz", "rank", "zsum")
MAX_BLOCKS = 8  # the cost bound of the choice: 12 blocks cost 1.22x a plain forward (probe-cost.md)


def own_first(scores, own, rows):
    s = np.where(np.isnan(scores[rows]), -np.inf, scores[rows])
    return float(np.mean(np.argmax(s, axis=1) == own[rows]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    args = ap.parse_args(argv)
    import logo_cpp

    model = logo_cpp.Model(args.model, n_ctx=2048, n_threads=1)
    nw, eps = read_norm_weights(args.model), read_rms_eps(args.model)
    gen = generic_states(model, args.cache)
    pools = {}
    for pool_dir in POOLS:
        # Halves: within each task, alternate prompts in file order (choose on A, report on B).
        ip = load_inpool(model, pool_dir, args.cache)
        sig = Signals([read_adapter(str(p)) for _, p in ip.adapters], ip.ev, gen, nw, eps)
        pools[pool_dir.name] = (sig, ip.own, ip.half)
        print(pool_dir, len(ip.kept), "prompts", flush=True)

    results = []
    for modules in (("attn_q",), ("attn_v",), ("attn_q", "attn_v")):
        for n_blocks in (1, 2, 4, 6, 8, 10, 12):
            layers = tuple(range(30 - n_blocks, 30))
            for centred in (False, True):
                for agg in AGGS if n_blocks > 1 else ("meanz", "sqz", "logz"):
                    row = {"modules": modules, "layers": f"{layers[0]}-{layers[-1]}", "n_blocks": n_blocks,
                           "centred": centred, "agg": agg}
                    for name, (sig, own, half) in pools.items():
                        s = sig.scores(layers, modules, centred, agg)
                        row[name] = {"A": own_first(s, own, half == 1), "B": own_first(s, own, half == 0),
                                     "all": own_first(s, own, np.ones(len(own), bool))}
                    results.append(row)
                    print(f"{'+'.join(modules):<14} {row['layers']:>6} c={int(centred)} {agg:<5} "
                          f"pool A {row['pool']['A']:.3f} B {row['pool']['B']:.3f} all {row['pool']['all']:.3f} | "
                          f"alt A {row['pool-alt']['A']:.3f} B {row['pool-alt']['B']:.3f} all {row['pool-alt']['all']:.3f}",
                          flush=True)
    # The choice: the best mean own-first over half A of both pools among candidates of <= MAX_BLOCKS blocks
    # whose statistics are per adapter matrix (the runtime's design: computed once per matrix, cached by its
    # content; "zsum" needs statistics of a cross-block sum); half B is the held-out estimate.
    key = lambda r: (r["pool"]["A"] + r["pool-alt"]["A"]) / 2  # noqa: E731

    def show(title, rows):
        print(f"\n{title}")
        for r in rows[:5]:
            print(f"  {'+'.join(r['modules'])} {r['layers']} centred={r['centred']} {r['agg']}: A mean {key(r):.3f}; "
                  f"B {r['pool']['B']:.3f} / {r['pool-alt']['B']:.3f}; all {r['pool']['all']:.3f} / "
                  f"{r['pool-alt']['all']:.3f} (pool / pool-alt)")

    small = sorted((r for r in results if r["n_blocks"] <= MAX_BLOCKS), key=key, reverse=True)
    eligible = [r for r in small if r["agg"] != "zsum"]
    show(f"chosen: best on half A of both pools, <= {MAX_BLOCKS} blocks, per-matrix statistics (top 5):", eligible)
    show("for comparison, with the z-score of block-summed signals (zsum) allowed (top 5):", small)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chosen": eligible[0], "rule": "max mean own-first on half A of both pools, "
                                    f"<= {MAX_BLOCKS} blocks, per-matrix statistics (agg != zsum)",
                                    "candidates": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
