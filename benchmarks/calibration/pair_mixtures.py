"""Session-5 question (issue 11): does a mixture of a look-alike pair keep the own adapter's accuracy? The
shipped pool's three confused pairs, every held-out prompt of the first task of each pair, the own adapter at
weight w and the look-alike at 1 - w (w = 1, 0.7, 0.5, 0.3), greedy, the task's max_tokens.

    python benchmarks/calibration/pair_mixtures.py > docs/calibration/pair-mixtures.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from correctness import max_tokens_for, scorer  # noqa: E402
from explore import pool_adapters  # noqa: E402
from probe_data import load_pool_dir  # noqa: E402

PAIRS = (("uppercase", "past_tense"), ("acronym", "sort_words"), ("addition", "multiplication"))


def main() -> int:
    import logo_cpp
    from logo_cpp import default_model

    score = scorer(None)
    manifest, items = load_pool_dir(Path("models/pool"))
    adapters = pool_adapters(Path("models/pool"), manifest)
    names = [n for n, _ in adapters]
    model = logo_cpp.Model(str(default_model.base_model_path()), n_ctx=512, n_threads=1)
    pool = logo_cpp.AdapterPool(model, [f for _, f in adapters], names=names)
    for own, other in PAIRS:
        its = [it for it in items if it["task"] == own]
        for w in (1.0, 0.7, 0.5, 0.3):
            kw = model._sampling_kwargs(max_tokens_for(manifest, own), 0.0, 40, 0.95, 0.05, 0, None, False)
            sel = [(names.index(own), w)] + ([(names.index(other), 1 - w)] if w < 1 else [])
            accs = []
            for s in range(0, len(its), 16):
                group = its[s:s + 16]
                kw.update(pool=pool._core, selections=[sel for _ in group])
                outs = model._run([model._prompt_tokens(it["prompt"]) for it in group], kw)
                accs += [score(own, o.text, it["answer"]) for it, o in zip(group, outs)]
            print(f"{own} {w:.1f} + {other} {1 - w:.1f}: {np.mean(accs):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
