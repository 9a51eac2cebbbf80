"""Does the runtime's rerank (LoGo(rerank_margin=...).generate) make the choices rerank_confidence.py measured?

    python benchmarks/calibration/rerank_runtime_check.py --threads 1

For every held-out in-pool prompt of the shipped pool whose default top-two margin is below the margin (the
prompts the study reranked), routes and generates through the runtime (k = 1, greedy, the task's max_tokens)
and compares the kept adapter and its mean log-probabilities with the study's (docs/calibration/
rerank-confidence.json's cache). Prints the agreement, and the task score of the runtime's kept adapters against
the study's over these prompts (the study's cached score of each (prompt, adapter) answer), so that a changed
choice shows what it does to the accuracy over all prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rerank_confidence as R  # noqa: E402
import study_accuracy as S  # noqa: E402
from correctness import max_tokens_for  # noqa: E402
from inpool import generic_states, load_inpool  # noqa: E402
from probe_data import read_adapter, read_norm_weights, read_rms_eps  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--pool-dir", type=Path, default=Path("models/pool"))
    args = ap.parse_args(argv)
    import logo_cpp
    from logo_cpp import default_model

    mp = str(default_model.base_model_path())
    nw, eps = read_norm_weights(mp), read_rms_eps(mp)
    model = logo_cpp.Model(mp, n_ctx=512, n_threads=args.threads)
    p = load_inpool(model, args.pool_dir, args.cache)
    read = [read_adapter(str(f)) for _, f in p.adapters]
    z = S.Pool(read, p.ev, generic_states(model, args.cache), nw, eps, modules=("attn_v",)).scores(
        R.V8, ("attn_v",), "mean", "sqz")
    c1, c2, margin = R.top2(z)
    keys = [R.sha(Path(f).read_bytes()) for _, f in p.adapters]
    data = json.loads((args.cache / f"rerank-{R.sha(str(p.dir.resolve()).encode())}.json").read_text())
    key = lambda i, j: R.sha((p.kept[i]["prompt"] + "\0" + p.kept[i]["task"]).encode()) + ":" + keys[j]  # noqa: E731
    pool = logo_cpp.AdapterPool(model, [f for _, f in p.adapters], names=p.names)
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=args.margin, cache_dir=False)
    rows = np.flatnonzero(margin < args.margin)
    same_top2 = same_choice = 0
    runtime_score = study_score = 0.0
    diffs = []
    t0 = time.perf_counter()
    for i in rows:
        it = p.kept[i]
        out = router.generate(it["prompt"], max_tokens=max_tokens_for(p.manifest, it["task"]), temperature=0)
        info = out.routing.rerank
        study = [data[key(i, int(c))]["mean_lp"] for c in (c1[i], c2[i])]
        expected = p.names[c2[i]] if study[1] > study[0] else p.names[c1[i]]
        same_top2 += info["candidates"] == [p.names[c1[i]], p.names[c2[i]]]
        same_choice += info["chosen"] == expected
        runtime_score += data[key(i, p.names.index(info["chosen"]))]["score"]
        study_score += data[key(i, p.names.index(expected))]["score"]
        if info["chosen"] != expected:
            print(f"  differs: prompt {i} ({it['task']}): study keeps {expected}, runtime {info['chosen']} "
                  f"(mean log-probs study {study}, runtime {info['mean_logprobs']})")
        if info["mean_logprobs"] is not None and info["candidates"] == [p.names[c1[i]], p.names[c2[i]]]:
            diffs.append(np.max(np.abs(np.array(info["mean_logprobs"]) - study)))
    print(f"{args.pool_dir}: {len(rows)} prompts with margin < {args.margin} ({time.perf_counter() - t0:.0f} s): runtime top "
          f"two = study's {same_top2}, kept adapter = study's {same_choice}; mean log-probabilities differ by at most "
          f"{max(diffs):.2e} (median {np.median(diffs):.2e}); task score of the kept adapters' answers: runtime "
          f"{runtime_score:g}, study {study_score:g} (of {len(rows)}; over all {len(p.kept)} in-pool prompts that "
          f"moves the accuracy by {(runtime_score - study_score) / len(p.kept):+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
