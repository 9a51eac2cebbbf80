"""Session 8 (issue 11): a confidence rerank that is safe out of pool: the base model (no adapter) as one more
candidate, and/or a "no adapter fits" gate that serves the base model when the top calibrated score is low;
chosen by a rule fixed on half A before half B was read (the protocol of rerank_confidence.py, session 6).

    flock /work/locks/heavy.lock python benchmarks/calibration/rerank_base.py \
        --out docs/calibration/rerank-base.json --threads 1 > docs/calibration/rerank-base.txt

Why (written before the run): session 6's rerank (top two of the default router, margin < 0.5, the answer with the
higher mean token log-probability kept) meets the in-pool accuracy target but answered 1 of 216 out-of-pool
prompts fewer than the base model on the shipped pool. Out of pool no adapter fits, so the rerank only chooses
between two wrong adapters; giving it the base model as a third candidate lets "no adapter" win where the model
is more confident without one. The gate asks the same question from the probe alone: a prompt whose best
calibrated score is below what the generic (no-task) calibration prompts reach is treated as fitting no adapter.

Inputs, per pool (models/pool, models/pool-alt; in pool 648 prompts, out of pool 216):
- the default router's calibrated scores z (zscore_sq, attn_v blocks 22-29; computed in numpy from the cached hidden
  states as rerank_confidence.py does, which reproduces the runtime's choices), its top two c1, c2 and their
  margin z_c1 - z_c2;
- each candidate adapter's greedy answer and its mean log-probability (mean_lp) from rerank_confidence.py's cache
  (session 6: teacher-forced; prompts with margin < 2);
- the base model's greedy answer to every prompt (the task's max_tokens, alone, as the runtime's rerank generates)
  with the decoder's log-probabilities (logo_cpp.rerank.mean_logprob: the rule the runtime uses), cached here in
  cache/rerank-base.json; its task score from measure.py's cache where that has it (the study's accuracy), else
  from this answer.

Configurations (mode, tau, gate):
- mode "top2": at margin < tau the higher mean_lp of c1, c2 serves (session 6; c1 on ties);
  mode "top2+base": at margin < tau the highest mean_lp of c1, c2 and the base model serves (c1, then c2 on ties);
- tau in TAUS (as session 6);
- gate q in GATES: when z_c1 < theta_q, the base model serves (before any rerank); theta_q is the q-quantile, over
  the 126 generic calibration prompts, of their own top calibrated score (label-free: the generic prompts are the
  router's calibration set); None: no gate.

The rule (written before half B was read): among configurations whose out-of-pool task accuracy on half A of the
out-of-pool prompts (the 1st, 3rd, ... of each task) is at least the base model's there on both pools, the best
mean in-pool task accuracy on half A of both pools (equal weight); ties go to no gate, then the smaller tau, then
"top2" before "top2+base", then the lower gate quantile. Reported on half B and on all prompts, in and out of pool.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_accuracy as S  # noqa: E402
from correctness import max_tokens_for, scorer  # noqa: E402
from inpool import (POOLS, generic_states, halves, load_inpool, outpool_states, study_arguments,  # noqa: E402
                    write_report)
from probe_data import read_adapter, read_norm_weights, read_rms_eps  # noqa: E402
from rerank_confidence import V8, Candidates, sha, top2  # noqa: E402

TAUS = (0.25, 0.5, 1.0, 2.0)
MODES = ("top2", "top2+base")
GATES = (None, 0.1, 0.5, 0.9)
BASE = -1  # the base model as a choice (no adapter)


class BaseAnswers:
    """The base model's greedy answer to a prompt with the decoder's log-probabilities, cached by prompt and task."""

    def __init__(self, model, cache: Path):
        self.model, self.path = model, cache / "rerank-base.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.score = scorer(None)

    @staticmethod
    def key(item) -> str:
        return sha((item["prompt"] + "\0" + item["task"]).encode())

    def need(self, items, manifest) -> None:
        from logo_cpp.rerank import mean_logprob

        todo = [it for it in items if self.key(it) not in self.data]
        t0 = time.perf_counter()
        for n, it in enumerate(todo, 1):
            ids = self.model._prompt_tokens(it["prompt"])
            o = self.model.generate(ids, max_tokens=max_tokens_for(manifest, it["task"]), temperature=0.0,
                                    logprobs=True)
            self.data[self.key(it)] = {"mean_lp": mean_logprob(o), "text": o.text, "finish": o.finish_reason,
                                       "score": float(self.score(it["task"], o.text, it["answer"])),
                                       "seconds": o.timings.prefill_seconds + o.timings.decode_seconds}
            if n % 100 == 0 or n == len(todo):
                print(f"  base answers: {n} of {len(todo)} ({time.perf_counter() - t0:.0f} s)", flush=True)
                self.path.write_text(json.dumps(self.data))

    def get(self, item) -> dict:
        return self.data[self.key(item)]


def choose(c1, c2, margin, z1, lp1, lp2, lpb, mode, tau, theta):
    """(P,) choices: adapter indices, BASE for the base model. lp*: (P,) mean_lp of c1, c2, base (NaN where not
    needed: margin >= max(TAUS))."""
    out = c1.copy()
    close = margin < tau
    if mode == "top2":
        out = np.where(close & (lp2 > lp1), c2, out)
    else:
        best = np.where(lp2 > lp1, c2, c1)
        best_lp = np.maximum(lp1, lp2)
        out = np.where(close, np.where(lpb > best_lp, BASE, best), out)
    if theta is not None:
        out = np.where(z1 < theta, BASE, out)
    return out


def main(argv=None) -> int:
    args = study_arguments(__doc__, argv)
    import logo_cpp
    from logo_cpp import default_model

    mp = str(default_model.base_model_path())
    nw, eps = read_norm_weights(mp), read_rms_eps(mp)
    model = logo_cpp.Model(mp, n_ctx=512, n_threads=args.threads)
    eog = np.array([t for t in range(model._core.n_vocab) if model._core.is_end_of_generation(t)])
    gen = generic_states(model, args.cache)
    base = BaseAnswers(model, args.cache)
    report: dict = {"taus": [str(t) for t in TAUS], "modes": MODES, "gates": [str(g) for g in GATES],
                    "rule": "configurations with out-of-pool half-A accuracy >= the base model's on both pools; the "
                            "best mean in-pool half-A accuracy of both pools; ties: no gate, smaller tau, top2, lower "
                            "gate quantile", "pools": {}}
    pools = {}
    for pool_dir in POOLS:
        p = load_inpool(model, pool_dir, args.cache)
        read = [read_adapter(str(f)) for _, f in p.adapters]
        zin = S.Pool(read, p.ev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
        zgen = S.Pool(read, gen, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
        oop, ev = outpool_states(model, pool_dir, args.cache)
        zout = S.Pool(read, ev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
        oitems = [p.items[i] for i in oop]
        core_pool = logo_cpp.AdapterPool(model, [f for _, f in p.adapters], names=p.names)
        sets = {}
        for which, z, items in (("in", zin, p.kept), ("out", zout, oitems)):
            c1, c2, margin = top2(z)
            cands = Candidates(model, core_pool, p, items, args.cache, eog)
            near = np.flatnonzero(margin < max(TAUS))
            cands.need({(int(i), int(c)) for i in near for c in (c1[i], c2[i])})  # cached since session 6
            base.need(items, p.manifest)
            lp = lambda c: np.array([cands.get(i, int(c[i]))["mean_lp"] if margin[i] < max(TAUS) else np.nan  # noqa: E731
                                     for i in range(len(items))])
            bkeys = [sha((it["prompt"] + "\0" + it["task"]).encode()) + ":base" for it in items]
            bscore = np.array([float(cands.gens[k]) if k in cands.gens else base.get(it)["score"]
                               for k, it in zip(bkeys, items)])
            unlike = sum(float(cands.gens[k]) != base.get(it)["score"] for k, it in zip(bkeys, items) if k in cands.gens)
            sets[which] = dict(items=items, cands=cands, c1=c1, c2=c2, margin=margin, z1=z[np.arange(len(z)), c1],
                               lp1=lp(c1), lp2=lp(c2), lpb=np.array([base.get(it)["mean_lp"] for it in items]),
                               bscore=bscore, half=halves([it["task"] for it in items]), base_unlike_cache=unlike,
                               base_from_cache=sum(k in cands.gens for k in bkeys))
        core_pool.close()
        g1 = np.sort(np.nanmax(zgen, axis=1))
        thetas = {q: float(np.quantile(g1, q)) for q in GATES if q is not None}
        pools[pool_dir.name] = dict(p=p, sets=sets, thetas=thetas)
        print(f"{pool_dir}: theta (generic prompts' top calibrated score) quantiles {thetas}; top calibrated score "
              f"in pool median {np.median(sets['in']['z1']):.2f}, out of pool median {np.median(sets['out']['z1']):.2f}"
              f"; base answers from measure.py's cache in/out {sets['in']['base_from_cache']}/"
              f"{sets['out']['base_from_cache']} (scored unlike this run's answer: {sets['in']['base_unlike_cache']}/"
              f"{sets['out']['base_unlike_cache']})", flush=True)

    def scores(name, which, chosen):
        s = pools[name]["sets"][which]
        return np.array([s["bscore"][i] if c == BASE else s["cands"].cached_score(i, int(c))
                         for i, c in enumerate(chosen)])

    def run(name, which, mode, tau, gate):
        s, th = pools[name]["sets"][which], pools[name]["thetas"]
        return choose(s["c1"], s["c2"], s["margin"], s["z1"], s["lp1"], s["lp2"], s["lpb"], mode, tau,
                      None if gate is None else th[gate])

    def summary(name, mode, tau, gate):
        p, out = pools[name]["p"], {}
        for which in ("in", "out"):
            s = pools[name]["sets"][which]
            chosen = run(name, which, mode, tau, gate)
            acc = scores(name, which, chosen)
            A = s["half"] == 1
            pre = "" if which == "in" else "out_"
            out.update({pre + "acc_A": float(acc[A].mean()), pre + "acc_B": float(acc[~A].mean()),
                        pre + "acc_all": float(acc.mean()), pre + "base_served": int((chosen == BASE).sum()),
                        pre + "changed": int((chosen != s["c1"]).sum())})
            if which == "in":
                hit = chosen == p.own
                out.update({"own_A": float(hit[A].mean()), "own_B": float(hit[~A].mean()), "own_all": float(hit.mean())})
        return out

    for name, d in pools.items():
        p, s, o = d["p"], d["sets"]["in"], d["sets"]["out"]
        oracle = np.array([s["cands"].gens[s["cands"].key(i, int(j))] for i, j in enumerate(p.own)], float)
        A, oA = s["half"] == 1, o["half"] == 1
        default = scores(name, "in", s["c1"])
        d_out = scores(name, "out", o["c1"])
        r = {"oracle": {"A": float(oracle[A].mean()), "B": float(oracle[~A].mean()), "all": float(oracle.mean())},
             "default": {"A": float(default[A].mean()), "B": float(default[~A].mean()), "all": float(default.mean())},
             "base_in_pool": {"A": float(s["bscore"][A].mean()), "B": float(s["bscore"][~A].mean()),
                              "all": float(s["bscore"].mean())},
             "base_out_of_pool": {"A": float(o["bscore"][oA].mean()), "B": float(o["bscore"][~oA].mean()),
                                  "all": float(o["bscore"].mean())},
             "default_out_of_pool": {"A": float(d_out[oA].mean()), "B": float(d_out[~oA].mean()),
                                     "all": float(d_out.mean())},
             "thetas": {str(q): t for q, t in d["thetas"].items()}}
        report["pools"][name] = r
        print(f"\n{name}: oracle {r['oracle']}; default {r['default']}; base in pool {r['base_in_pool']}; out of pool: "
              f"base {r['base_out_of_pool']}, default {r['default_out_of_pool']}", flush=True)

    configs = [(m, t, g) for g in GATES for t in TAUS for m in MODES]
    label = lambda m, t, g: f"{m} tau {t} gate {g}"  # noqa: E731
    grid = []
    print("\nhalf A only (the rule): in-pool accuracy pool / pool-alt / mean; out of pool (base)")
    for m, t, g in configs:
        sa = {name: summary(name, m, t, g) for name in pools}
        ok = all(sa[n]["out_acc_A"] >= report["pools"][n]["base_out_of_pool"]["A"] for n in pools)
        mean_a = float(np.mean([sa[n]["acc_A"] for n in pools]))
        grid.append({"config": label(m, t, g), "mode": m, "tau": t, "gate": g, "mean_A": mean_a, "out_ok_A": ok,
                     "A": {n: sa[n]["acc_A"] for n in pools}, "out_A": {n: sa[n]["out_acc_A"] for n in pools}})
        print(f"  {label(m, t, g):<32} {sa['pool']['acc_A']:.3f} / {sa['pool-alt']['acc_A']:.3f} / {mean_a:.3f}  "
              f"out {sa['pool']['out_acc_A']:.3f} ({report['pools']['pool']['base_out_of_pool']['A']:.3f}) / "
              f"{sa['pool-alt']['out_acc_A']:.3f} ({report['pools']['pool-alt']['base_out_of_pool']['A']:.3f})"
              f"{'' if ok else '  out of pool under the base: excluded'}", flush=True)
    report["grid_half_A"] = [dict(g, gate=str(g["gate"])) for g in grid]
    eligible = [g for g in grid if g["out_ok_A"]]
    rank = lambda g: (round(g["mean_A"], 9), g["gate"] is None, -TAUS.index(g["tau"]), -MODES.index(g["mode"]),  # noqa: E731
                      -(GATES.index(g["gate"])))
    best = max(eligible, key=rank) if eligible else None
    report["chosen"] = best["config"] if best else None
    print(f"\nchosen on half A: {report['chosen']}", flush=True)
    # Only now: half B, all prompts, in and out of pool, every configuration (for the record, not for choosing).
    report["results"] = {label(m, t, g): {n: summary(n, m, t, g) for n in pools} for m, t, g in configs}
    print("\nevery configuration: in pool acc A / B / all (own-first all) | out of pool A / B / all; shipped, then "
          "pool-alt")
    for key, rr in report["results"].items():
        line = f"  {key:<32}"
        for n in pools:
            c = rr[n]
            line += (f" | {n}: {c['acc_A']:.3f} / {c['acc_B']:.3f} / {c['acc_all']:.3f} ({c['own_all']:.3f}) out "
                     f"{c['out_acc_A']:.3f} / {c['out_acc_B']:.3f} / {c['out_acc_all']:.3f} base {c['base_served']}"
                     f"+{c['out_base_served']}")
        print(line + ("   <- chosen" if key == report["chosen"] else ""))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
