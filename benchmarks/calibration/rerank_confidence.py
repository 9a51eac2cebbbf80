"""Session 6 (issue 11): rerank the default router's top 2 adapters by the model's own confidence in each
candidate's answer (label-free), chosen by a rule fixed on half A before half B was read.

    python benchmarks/calibration/rerank_confidence.py --out docs/calibration/rerank-confidence.json --threads 1 \
        > docs/calibration/rerank-confidence.txt

For every held-out prompt of both pools (in pool: 648 each; out of pool: 216 each) the default router's
calibrated scores z (zscore_sq of ||R A x_mean||, attn_v blocks 22-29, computed in numpy from the cached hidden
states as study_accuracy.py does, which reproduces the runtime's choices) give the top 2 candidates c1, c2 and
their margin z_c1 - z_c2. Each candidate's answer is generated (greedy, the task's max_tokens, as measure.py:
batches of one task, each prompt with its candidate alone at weight 1) and then run once more teacher-forced
(prompt + answer, the candidate at weight 1: Model.logits) to read the model's log-probabilities:

- mean_lp: mean log-probability of the answer's tokens (and of ending there, log P(any end-of-generation
  token), when the answer ended at EOS)
- sum_lp: their sum
- min_lp: the least likely of them
- first_p: the probability of the answer's first token (the top of the first distribution: greedy)
- first_negH: minus the entropy of the first token's distribution (nats)

The first two rules need both answers generated; first_p / first_negH need only one prefill per candidate.
A rerank with rule R and threshold tau keeps c1 unless margin < tau and R(c2) > R(c1).

The rule (written before half B was read): (R, tau) in RULES x TAUS with the best mean task accuracy on half A
of models/pool and models/pool-alt (equal weight per pool); ties go to the smaller tau (fewer prompts
reranked), then to the first rule in RULES order. Reported on half B and on all prompts, out of pool next to
the base model, with own-first and what it costs (--timing: per prompt, the probe, a prefill with one adapter
and a k = 1 generation, sequentially at --threads).

Task scores come from measure.py's generation cache (the same key: prompt and adapter file content); pairs not
cached yet are added from this script's generations. A generated answer whose score differs from the cached
one (another batch can flip a near-tied greedy token) is counted and reported; accuracies use the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_accuracy as S  # noqa: E402
from correctness import max_tokens_for, scorer  # noqa: E402
from inpool import POOLS, generic_states, load_inpool, outpool_states, write_report  # noqa: E402
from probe_data import read_adapter, read_norm_weights, read_rms_eps  # noqa: E402

RULES = ("mean_lp", "sum_lp", "min_lp", "first_p", "first_negH")
TAUS = (0.25, 0.5, 1.0, 2.0)  # every shipped-pool misroute has margin < 1 (see the docs)
V8 = tuple(range(22, 30))
BATCH = 16


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def confidence(lp: np.ndarray, n_prompt: int, answer: list[int], eos_ended: bool, eog: np.ndarray) -> dict:
    """The rules' values from log-softmax ``lp`` (n_prompt + len(answer), n_vocab) of a teacher-forced pass:
    row n_prompt - 1 + t predicts answer token t; row n_prompt - 1 + len(answer) the end."""
    first = lp[n_prompt - 1]
    tok = [float(lp[n_prompt - 1 + t, a]) for t, a in enumerate(answer)]
    greedy = [int(np.argmax(lp[n_prompt - 1 + t])) == a for t, a in enumerate(answer)]
    if eos_ended:
        row = lp[n_prompt - 1 + len(answer)]
        tok.append(float(np.logaddexp.reduce(row[eog])))
        greedy.append(bool(np.argmax(row) in set(eog.tolist())))
    p = np.exp(first)
    return {"mean_lp": float(np.mean(tok)) if tok else 0.0, "sum_lp": float(np.sum(tok)),
            "min_lp": float(np.min(tok)) if tok else 0.0, "first_p": float(p.max()),
            "first_negH": float(np.sum(p * first)), "greedy_agrees": bool(all(greedy)), "n_answer": len(answer)}


def teacher_forced(model, pool, j: int, ids: list[int], answer: list[int]) -> np.ndarray:
    """Logits (1 + len(answer), n_vocab) float32 of prompt ``ids`` + ``answer`` with adapter j alone at weight 1,
    from row len(ids) - 1 on (the prompt's earlier rows are not computed: the prompt minus its last token is
    evaluated first without logits). Row 0 predicts answer[0]."""
    mix = dict(pool=pool._core, selections=[[(j, 1.0)]])
    with model._lock:
        s = model._session
        s.clear(0)
        if len(ids) > 1:
            s.evaluate(0, 1, ids[:-1], all_logits=False, **mix)
        out = s.evaluate(0, 1, ids[-1:] + answer, all_logits=True, **mix)
        s.clear(0)
    return out


class Candidates:
    """Answers and confidences of (prompt, adapter) pairs, cached in one JSON file per pool (by prompt and
    adapter file content, as measure.py's generation cache)."""

    def __init__(self, model, pool, p, items, cache: Path, eog: np.ndarray):
        self.model, self.pool, self.p, self.items, self.eog = model, pool, p, items, eog
        self.file_keys = [sha(Path(f).read_bytes()) for _, f in p.adapters]
        self.path = cache / f"rerank-{sha(str(p.dir.resolve()).encode())}.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.gens_path = cache / f"generations-{sha(str(p.dir.resolve()).encode())}.json"
        self.gens = json.loads(self.gens_path.read_text()) if self.gens_path.exists() else {}
        self.score = scorer(None)
        self.mismatch = 0
        self.added = 0

    def key(self, i: int, j: int) -> str:
        it = self.items[i]
        return sha((it["prompt"] + "\0" + it["task"]).encode()) + ":" + self.file_keys[j]

    def need(self, pairs: set) -> None:
        model = self.model
        todo = sorted(p for p in pairs if self.key(*p) not in self.data)
        todo.sort(key=lambda q: (self.items[q[0]]["task"], q))
        t0 = time.perf_counter()
        done = 0
        while todo:
            task = self.items[todo[0][0]]["task"]
            group = [q for q in todo if self.items[q[0]]["task"] == task][:BATCH]
            todo = [q for q in todo if q not in group]
            kw = model._sampling_kwargs(max_tokens_for(self.p.manifest, task), 0.0, 40, 0.95, 0.05, 0, None, False)
            kw.update(pool=self.pool._core, selections=[[(j, 1.0)] for _, j in group])
            prompts = [model._prompt_tokens(self.items[i]["prompt"]) for i, _ in group]
            tg = time.perf_counter()
            outs = model._run(prompts, kw)
            gen_s = time.perf_counter() - tg
            for (i, j), ids, o in zip(group, prompts, outs):
                tf = time.perf_counter()
                logits = teacher_forced(model, self.pool, j, ids, list(o.tokens))
                rec = confidence(log_softmax(logits), 1, list(o.tokens), o.finish_reason == "eos", self.eog)
                rec["teacher_forced_s"] = time.perf_counter() - tf
                rec["score"] = float(self.score(task, o.text, self.items[i]["answer"]))
                rec["text"] = o.text
                rec["finish"] = o.finish_reason
                rec["batch_gen_s"] = gen_s / len(group)
                self.data[self.key(i, j)] = rec
                gk = self.key(i, j)
                if gk not in self.gens:
                    self.gens[gk] = rec["score"]
                    self.added += 1
            done += len(group)
            if done % 160 < BATCH:
                print(f"  {self.p.dir.name}: {done} answers ({time.perf_counter() - t0:.0f} s, {len(todo)} left)",
                      flush=True)
                self.save()
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))
        self.gens_path.write_text(json.dumps(self.gens))

    def get(self, i: int, j: int) -> dict:
        return self.data[self.key(i, j)]

    def cached_score(self, i: int, j: int) -> float:
        """measure.py's cached score (the study's accuracy); counts disagreements with this script's answer."""
        return float(self.gens[self.key(i, j)])


def top2(z: np.ndarray):
    order = np.argsort(-np.where(np.isnan(z), -np.inf, z), axis=1, kind="stable")
    c1, c2 = order[:, 0], order[:, 1]
    r = np.arange(len(z))
    return c1, c2, z[r, c1] - z[r, c2]


def rerank(c1, c2, margin, conf1, conf2, tau):
    """The reranked choice: c2 where margin < tau and the rule's confidence of c2 is higher."""
    return np.where((margin < tau) & (conf2 > conf1), c2, c1)


def timing(model, p, n: int, threads: int) -> dict:
    """Per prompt, sequentially: the default router's probe (LoGo.route, statistics warm), a prefill with one
    adapter (Model.logits of the prompt), a k = 1 greedy generation (prefill + decode timings) and a
    teacher-forced pass over prompt + answer. Medians over the first prompt of each task, then the second, ..."""
    import logo_cpp

    pool = logo_cpp.AdapterPool(model, [f for _, f in p.adapters], names=p.names)
    router = logo_cpp.LoGo(model, pool, k=1, cache_dir=False)
    router.route(p.kept[0]["prompt"])  # statistics
    rows = sorted(range(len(p.kept)), key=lambda i: (i % 36, i))[:n]
    probe, prefill, gen, gen_prefill, decode, tf, n_tok = [], [], [], [], [], [], []
    for i in rows:
        it = p.kept[i]
        ids = model._prompt_tokens(it["prompt"])
        t0 = time.perf_counter()
        r = router.route(it["prompt"])
        probe.append(time.perf_counter() - t0)
        name = r.names[0]
        t0 = time.perf_counter()
        model.logits(ids, adapters={name: 1.0})
        prefill.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        o = model.generate(ids, max_tokens=max_tokens_for(p.manifest, it["task"]), temperature=0.0,
                           adapters={name: 1.0})
        gen.append(time.perf_counter() - t0)
        gen_prefill.append(o.timings.prefill_seconds)
        decode.append(o.timings.decode_seconds)
        n_tok.append(len(o.tokens))
        t0 = time.perf_counter()
        model.logits(ids + list(o.tokens), adapters={name: 1.0})
        tf.append(time.perf_counter() - t0)
    pool.close()
    med = lambda x: float(np.median(x))  # noqa: E731
    return {"prompts": len(rows), "threads": threads, "route_s": med(probe), "prefill_one_adapter_s": med(prefill),
            "generate_k1_s": med(gen), "generate_prefill_s": med(gen_prefill), "generate_decode_s": med(decode),
            "answer_tokens": med(n_tok), "teacher_forced_s": med(tf)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-out-of-pool", action="store_true", help="in-pool prompts only")
    ap.add_argument("--timing", type=int, default=36, help="prompts timed sequentially (0: no timing)")
    args = ap.parse_args(argv)
    import logo_cpp
    from logo_cpp import default_model

    mp = str(default_model.base_model_path())
    nw, eps = read_norm_weights(mp), read_rms_eps(mp)
    model = logo_cpp.Model(mp, n_ctx=512, n_threads=args.threads)
    eog = np.array([t for t in range(model._core.n_vocab) if model._core.is_end_of_generation(t)])
    gen = generic_states(model, args.cache)
    report: dict = {"rules": RULES, "taus": [str(t) for t in TAUS],
                    "rule": "(R, tau) with the best mean task accuracy on half A of both pools (equal weight); ties: "
                            "smaller tau, then RULES order", "pools": {}}
    pools = {}
    for pool_dir in POOLS:
        p = load_inpool(model, pool_dir, args.cache)
        read = [read_adapter(str(f)) for _, f in p.adapters]
        z = S.Pool(read, p.ev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
        c1, c2, margin = top2(z)
        core_pool = logo_cpp.AdapterPool(model, [f for _, f in p.adapters], names=p.names)
        cands = Candidates(model, core_pool, p, p.kept, args.cache, eog)
        t0 = time.perf_counter()
        cands.need({(i, int(c)) for i in np.flatnonzero(margin < max(TAUS)) for c in (c1[i], c2[i])})
        print(f"{pool_dir}: in-pool answers ready ({time.perf_counter() - t0:.0f} s; {cands.added} new pairs in "
              f"measure.py's cache)", flush=True)
        out = None
        if not args.no_out_of_pool:
            oop, ev = outpool_states(model, pool_dir, args.cache)
            zo = S.Pool(read, ev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
            o1, o2, om = top2(zo)
            oitems = [p.items[i] for i in oop]
            ocands = Candidates(model, core_pool, p, oitems, args.cache, eog)
            ocands.need({(i, int(c)) for i in np.flatnonzero(om < max(TAUS)) for c in (o1[i], o2[i])})
            base_key = lambda i: sha((oitems[i]["prompt"] + "\0" + oitems[i]["task"]).encode()) + ":base"  # noqa: E731
            base = np.array([float(ocands.gens[base_key(i)]) for i in range(len(oitems))])
            out = dict(cands=ocands, c1=o1, c2=o2, margin=om, base=base)
            print(f"{pool_dir}: out-of-pool answers ready", flush=True)
        core_pool.close()
        pools[pool_dir.name] = dict(p=p, z=z, c1=c1, c2=c2, margin=margin, cands=cands, out=out)

    def evaluate(name, rule, tau, which="in"):
        d = pools[name]
        if which == "in":
            cands, c1, c2, margin = d["cands"], d["c1"], d["c2"], d["margin"]
        else:
            cands, c1, c2, margin = (d["out"][k] for k in ("cands", "c1", "c2", "margin"))
        # Prompts with margin >= max(TAUS) are never reranked and have no confidences.
        conf = lambda c: np.array([cands.get(i, int(j))[rule] if margin[i] < max(TAUS) else np.nan  # noqa: E731
                                   for i, j in enumerate(c)])
        chosen = rerank(c1, c2, margin, conf(c1), conf(c2), tau)
        acc = np.array([cands.cached_score(i, int(j)) for i, j in enumerate(chosen)])
        return chosen, acc

    def summary(name, chosen, acc):
        p = pools[name]["p"]
        hit = chosen == p.own
        return {"acc_A": float(acc[p.A].mean()), "acc_B": float(acc[p.B].mean()), "acc_all": float(acc.mean()),
                "own_A": float(hit[p.A].mean()), "own_B": float(hit[p.B].mean()), "own_all": float(hit.mean()),
                "changed": int((chosen != pools[name]["c1"]).sum())}

    for name, d in pools.items():
        p, cands = d["p"], d["cands"]
        oracle = np.array([cands.gens[cands.key(i, int(o))] for i, o in enumerate(p.own)], float)
        default = np.array([cands.cached_score(i, int(c)) for i, c in enumerate(d["c1"])])
        own_in_top2 = (d["c1"] == p.own) | (d["c2"] == p.own)
        near = np.flatnonzero(d["margin"] < max(TAUS))  # the prompts whose top 2 were both answered
        best2 = default.copy()
        best2[near] = np.maximum(default[near], [cands.cached_score(i, int(d["c2"][i])) for i in near])
        pairs = [(int(i), int(c)) for i in near for c in (d["c1"][i], d["c2"][i])]
        disagree = sum(cands.get(i, c)["score"] != cands.cached_score(i, c) for i, c in pairs)
        greedy = np.mean([cands.get(i, c)["greedy_agrees"] for i, c in pairs])
        r = {"prompts": len(p.own),
             "oracle": {"A": float(oracle[p.A].mean()), "B": float(oracle[p.B].mean()), "all": float(oracle.mean())},
             "default": {"A": float(default[p.A].mean()), "B": float(default[p.B].mean()), "all": float(default.mean())},
             "own_in_top2": float(own_in_top2.mean()),
             "best_of_top2 (label-using bound)": {"A": float(best2[p.A].mean()), "B": float(best2[p.B].mean()),
                                                  "all": float(best2.mean())},
             "answered_prompts (margin < max tau)": int(len(near)), "answers_scored_unlike_cache": int(disagree), "teacher_forced_greedy_agreement": float(greedy)}
        report["pools"][name] = r
        print(f"\n{name}: oracle A {r['oracle']['A']:.3f} B {r['oracle']['B']:.3f} all {r['oracle']['all']:.3f}; "
              f"default A {r['default']['A']:.3f} B {r['default']['B']:.3f} all {r['default']['all']:.3f}; own adapter "
              f"in the top 2: {r['own_in_top2']:.3f}; the better of the top 2 (a bound, uses labels): "
              f"{r['best_of_top2 (label-using bound)']['all']:.3f}; answers scored unlike the cache: {disagree}; "
              f"teacher-forced argmax = generated tokens: {greedy:.3f}", flush=True)

    # The grid on half A only.
    grid = []
    for rule in RULES:
        for tau in TAUS:
            accs = {name: summary(name, *evaluate(name, rule, tau))["acc_A"] for name in pools}
            grid.append({"rule": rule, "tau": str(tau), "A": accs, "mean_A": float(np.mean(list(accs.values())))})
            print(f"  {rule:<11} tau {tau:<5} half A: pool {accs['pool']:.3f}  pool-alt {accs['pool-alt']:.3f}  "
                  f"mean {grid[-1]['mean_A']:.3f}", flush=True)
    report["grid_half_A"] = grid
    best = max(grid, key=lambda g: (round(g["mean_A"], 9), -TAUS.index(float(g["tau"])), -RULES.index(g["rule"])))
    rule, tau = best["rule"], float(best["tau"])
    report["chosen"] = {"rule": rule, "tau": best["tau"]}
    print(f"\nchosen on half A: {rule}, tau {tau}", flush=True)
    # Only now: half B, all prompts, out of pool; every grid row too (for the record, not for choosing).
    report["results"] = {}
    for g in grid:
        key = f"{g['rule']} tau {g['tau']}"
        report["results"][key] = {}
        for name in pools:
            report["results"][key][name] = summary(name, *evaluate(name, g["rule"], float(g["tau"])))
            if pools[name]["out"] is not None:
                _, oacc = evaluate(name, g["rule"], float(g["tau"]), "out")
                report["results"][key][name]["out_of_pool"] = float(oacc.mean())
    for name, d in pools.items():
        c = report["results"][f"{rule} tau {best['tau']}"][name]
        r = report["pools"][name]
        line = (f"{name}: {rule} tau {tau}: accuracy A {c['acc_A']:.3f} B {c['acc_B']:.3f} all {c['acc_all']:.3f} "
                f"(default {r['default']['A']:.3f} / {r['default']['B']:.3f} / {r['default']['all']:.3f}; oracle "
                f"{r['oracle']['A']:.3f} / {r['oracle']['B']:.3f} / {r['oracle']['all']:.3f}); own-first "
                f"{c['own_A']:.3f} / {c['own_B']:.3f} / {c['own_all']:.3f}; {c['changed']} of {r['prompts']} changed")
        if d["out"] is not None:
            o = d["out"]
            default_out = np.array([o["cands"].cached_score(i, int(j)) for i, j in enumerate(o["c1"])])
            r["out_of_pool"] = {"base": float(o["base"].mean()), "default": float(default_out.mean())}
            line += (f"; out of pool {c['out_of_pool']:.3f} (default {default_out.mean():.3f}, base "
                     f"{o['base'].mean():.3f})")
        print(line, flush=True)
    print("\nevery rule (half A / half B / all, shipped | pool-alt; own-first all):")
    for key, rr in report["results"].items():
        a, b = rr["pool"], rr["pool-alt"]
        print(f"  {key:<22} {a['acc_A']:.3f} / {a['acc_B']:.3f} / {a['acc_all']:.3f} own {a['own_all']:.3f} | "
              f"{b['acc_A']:.3f} / {b['acc_B']:.3f} / {b['acc_all']:.3f} own {b['own_all']:.3f}"
              + (f" | out {a.get('out_of_pool', float('nan')):.3f} / {b.get('out_of_pool', float('nan')):.3f}"))
    if args.timing:
        report["timing"] = timing(model, pools["pool"]["p"], args.timing, args.threads)
        print(f"\ntiming (medians, {args.timing} prompts, {args.threads} thread(s)): {report['timing']}", flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
