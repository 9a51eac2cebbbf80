"""Session 6 (issue 11): a token-robust probe, the median (or a trimmed mean) over the prompt's tokens of each
token's calibrated energy, instead of the energy of the token mean.

    python benchmarks/calibration/token_robust.py --out docs/calibration/token-robust.json --threads 1 \
        > docs/calibration/token-robust.txt

Why (written before it was run): session 5's per-token view of the look-alike misroutes shows the content
tokens favouring the prompt's own adapter and a few punctuation/format tokens ("\\n", ":", "Answer") scoring
highest and favouring the look-alike. The default probe reads the token MEAN of the block input, so those
few tokens weigh in fully. A median over tokens (or a mean of the lower part) ignores the few highest tokens
without knowing which tokens are format tokens: label-free and format-free. Session 5 measured the per-token
energies' mean and max only.

Per adapter matrix (attn_v, blocks 22-29): e_t = ||R A x_t||^2 for every token t after BOS (x_t = the block
input RMSNorm(h_t) w), z_t = (e_t - mu) / sigma with mu, sigma over every token of the 126 generic prompts;
z_t averaged over the 8 blocks; then per prompt the median over its tokens ("median"), the mean of the lowest
75% ("trim75") or 50% ("trim50") of its tokens. Scored next to the default (zscore_sq of the token mean).

The rule: the candidate with the best mean task accuracy on half A of models/pool and models/pool-alt (equal
weight); ties go to the default, then in the order above. Task accuracy from measure.py's generation cache,
generating (greedy, as measure.py) every choice it lacks, in pool and out of pool.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_accuracy as S  # noqa: E402
from inpool import (POOLS, answer_choices, choice_scores, chosen_on_half_a, generic_states,  # noqa: E402
                    load_pool_study, open_model, print_choice_scores, reference_scores, study_arguments,
                    write_report)
from probe_data import ProbeSet  # noqa: E402

V8 = tuple(range(22, 30))
CANDIDATES = ("default", "median", "trim75", "trim50")


def token_z(read, ps: ProbeSet, gen: ProbeSet, nw, eps) -> np.ndarray:
    """(T, N): per token of ``ps``, each adapter's energy z-scored against the generic prompts' tokens, averaged
    over V8 (NaN for an adapter without attn_v there)."""
    zs = []
    for layer in V8:
        xe, xg = S.token_x(ps, layer, nw[layer], eps), S.token_x(gen, layer, nw[layer], eps)
        z = np.full((len(xe), len(read)), np.nan)
        for i, a in enumerate(read):
            if (layer, "attn_v") not in a:
                continue
            ra = S.rank_space(a[(layer, "attn_v")])
            e, g = np.sum((xe @ ra.T) ** 2, 1), np.sum((xg @ ra.T) ** 2, 1)
            z[:, i] = (e - g.mean()) / g.std()
        zs.append(z)
    return np.nanmean(np.stack(zs), 0)


def aggregate(z: np.ndarray, offs: np.ndarray, how: str) -> np.ndarray:
    """(P, N) per prompt: the median of its tokens' z, or the mean of its lowest 75% / 50% (at least one)."""
    out = np.empty((len(offs) - 1, z.shape[1]))
    for p in range(len(offs) - 1):
        t = z[offs[p]:offs[p + 1]]
        if how == "median":
            out[p] = np.median(t, 0)
        else:
            keep = max(1, int(np.ceil(len(t) * (0.75 if how == "trim75" else 0.5))))
            out[p] = np.sort(t, 0)[:keep].mean(0)
    return out


def main(argv=None) -> int:
    args = study_arguments(__doc__, argv)
    model, nw, eps = open_model(args.threads)
    gen = generic_states(model, args.cache)
    report: dict = {"candidates": CANDIDATES, "pools": {}, "results": {c: {} for c in CANDIDATES},
                    "rule": "best mean task accuracy on half A of both pools; ties: default, then listed order"}
    for pool_dir in POOLS:
        t0 = time.perf_counter()
        study = load_pool_study(model, pool_dir, args.cache)
        p, read, oev = study.p, study.read, study.oev
        chosen = {}
        for label, ps in (("in", p.ev), ("out", oev)):
            zd = S.Pool(read, ps, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
            zt = token_z(read, ps, gen, nw, eps)
            offs = ps.offsets()
            for c in CANDIDATES:
                s = zd if c == "default" else aggregate(zt, offs, c)
                chosen[(label, c)] = np.argmax(np.where(np.isnan(s), -np.inf, s), 1)
        print(f"{pool_dir}: scores in {time.perf_counter() - t0:.0f} s", flush=True)
        gens = answer_choices(model, study, args.cache, [chosen[("in", c)] for c in CANDIDATES],
                              [chosen[("out", c)] for c in CANDIDATES])
        report["pools"][pool_dir.name] = reference_scores(gens, study)
        for c in CANDIDATES:
            report["results"][c][pool_dir.name] = choice_scores(gens, study, chosen[("in", c)], chosen[("out", c)])
    best = chosen_on_half_a(report["results"], list(CANDIDATES), 8)
    report["chosen"] = best
    print(f"\nchosen on half A: {best}\n\nevery candidate: accuracy A / B / all, own-first A / B / all, out of pool")
    print_choice_scores(report["results"], list(CANDIDATES), 8)
    for name, r in report["pools"].items():
        print(f"  {name}: oracle {r['oracle']['A']:.3f} / {r['oracle']['B']:.3f} / {r['oracle']['all']:.3f}, base out of "
              f"pool {r['base_out_of_pool']:.3f}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
