"""Session 6 (issue 11): calibration statistics over the generic prompts rendered in several common prompt
formats at once (pooled), so that each adapter's mean and std cover formats rather than one.

    python benchmarks/calibration/format_calibration.py --out docs/calibration/format-calibration.json \
        --threads 1 > docs/calibration/format-calibration.txt

Session 5 found that calibrating on the generic prompts in the routed prompts' format ONLY (each + "\\nAnswer:")
moves the look-alike offsets the other way (uppercase -> past_tense 15 -> 0, but multiplication -> addition
36): the z-scale of each adapter then fits one format. Here the 126 shipped generic prompts are rendered in
several formats and the statistics (mean and std of s^2 per adapter matrix, as zscore_sq) are taken over all
renderings together. Formats: "plain" (the prompt as shipped: what the runtime calibrates on today),
"answer" (+ "\\nAnswer:", the held-out prompts' format), "a" (+ "\\nA:"), "qa" ("Q: " + prompt + "\\nA:") and
"chat" (one user message rendered by the model's chat template, with the generation prompt). Variants, fixed
before anything was measured:

- plain (today's default)
- plain + answer
- plain + answer + a + qa ("4 formats")
- plain + answer + a + qa + chat ("5 formats")
- plain + chat (the two formats the product itself sends: raw text and chat; no test-format knowledge)

Scored in numpy on the cached hidden states as study_accuracy.py (default probe: token mean, attn_v blocks
22-29, zscore_sq; only the calibration set changes), k = 1, both pools; task accuracy from measure.py's
generation cache, generating (greedy, as measure.py) every choice not cached yet, in pool and out of pool.

The rule (written before half B was read): the variant with the best mean task accuracy on half A of
models/pool and models/pool-alt (equal weight); ties go to the variant listed first. Reported on half B, all
prompts, own-first, and out of pool next to the base model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_accuracy as S  # noqa: E402
from inpool import (LAYERS_TOK, POOLS, answer_choices, choice_scores, chosen_on_half_a,  # noqa: E402
                    load_pool_study, open_model, print_choice_scores, reference_scores, study_arguments,
                    write_report)
from probe_data import ProbeSet, probe_set  # noqa: E402

V8 = tuple(range(22, 30))
VARIANTS = {
    "plain (default)": ("plain",),
    "plain + answer": ("plain", "answer"),
    "4 formats": ("plain", "answer", "a", "qa"),
    "5 formats (+ chat)": ("plain", "answer", "a", "qa", "chat"),
    "plain + chat": ("plain", "chat"),
}


def render(model, fmt: str, prompt: str) -> str:
    if fmt == "plain":
        return prompt
    if fmt == "answer":
        return prompt + "\nAnswer:"
    if fmt == "a":
        return prompt + "\nA:"
    if fmt == "qa":
        return "Q: " + prompt + "\nA:"
    if fmt == "chat":
        return model.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    raise ValueError(fmt)


def concat(sets: list[ProbeSet]) -> ProbeSet:
    """One ProbeSet of several (rows in order), with their per-token states."""
    out = ProbeSet(sum((s.prompts for s in sets), []), np.concatenate([s.last for s in sets]),
                   np.concatenate([s.mean for s in sets]), np.concatenate([s.n_tokens for s in sets]))
    out.tokens = np.concatenate([s.tokens for s in sets])
    out.token_layers = sets[0].token_layers
    return out


def main(argv=None) -> int:
    args = study_arguments(__doc__, argv)
    from logo_cpp import _core

    model, nw, eps = open_model(args.threads)
    generic = list(_core.calibration_prompts())
    t0 = time.perf_counter()
    states = {f: probe_set(model, [render(model, f, p) for p in generic], args.cache, "generic", LAYERS_TOK)
              for f in ("plain", "answer", "a", "qa", "chat")}
    print(f"generic prompts in 5 formats: states ready ({time.perf_counter() - t0:.0f} s); tokens per prompt "
          + ", ".join(f"{f} {s.n_tokens.mean():.1f}" for f, s in states.items()), flush=True)
    report: dict = {"variants": {k: list(v) for k, v in VARIANTS.items()},
                    "rule": "best mean task accuracy on half A of both pools (equal weight); ties: first listed",
                    "pools": {}, "results": {}}
    for pool_dir in POOLS:
        study = load_pool_study(model, pool_dir, args.cache)
        p, read, oev = study.p, study.read, study.oev
        chosen, chosen_out = {}, {}
        for label, fmts in VARIANTS.items():
            gen = concat([states[f] for f in fmts])
            z = S.Pool(read, p.ev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
            zo = S.Pool(read, oev, gen, nw, eps, modules=("attn_v",)).scores(V8, ("attn_v",), "mean", "sqz")
            chosen[label] = np.argmax(np.where(np.isnan(z), -np.inf, z), 1)
            chosen_out[label] = np.argmax(np.where(np.isnan(zo), -np.inf, zo), 1)
        # Generate every choice measure.py's cache lacks (in pool and out of pool; base out of pool).
        t0 = time.perf_counter()
        gens = answer_choices(model, study, args.cache, chosen.values(), chosen_out.values())
        print(f"{pool_dir}: choices answered ({time.perf_counter() - t0:.0f} s)", flush=True)
        report["pools"][pool_dir.name] = reference_scores(gens, study)
        for label in VARIANTS:
            by_pair: dict = {}
            for i in np.flatnonzero(chosen[label] != p.own):
                k = f"{p.names[p.own[i]]} -> {p.names[chosen[label][i]]}"
                by_pair[k] = by_pair.get(k, 0) + 1
            report["results"].setdefault(label, {})[pool_dir.name] = {
                **choice_scores(gens, study, chosen[label], chosen_out[label]),
                "misroutes": dict(sorted(by_pair.items(), key=lambda kv: -kv[1])[:6])}

    best = chosen_on_half_a(report["results"], list(VARIANTS), 22)
    report["chosen"] = best
    print(f"\nchosen on half A: {best}")
    print("\nevery variant: accuracy A / B / all, own-first A / B / all, out of pool (base "
          f"{report['pools']['pool']['base_out_of_pool']:.3f} / {report['pools']['pool-alt']['base_out_of_pool']:.3f}); "
          f"oracle pool {report['pools']['pool']['oracle']['A']:.3f} / {report['pools']['pool']['oracle']['B']:.3f} / "
          f"{report['pools']['pool']['oracle']['all']:.3f}, pool-alt {report['pools']['pool-alt']['oracle']['A']:.3f} / "
          f"{report['pools']['pool-alt']['oracle']['B']:.3f} / {report['pools']['pool-alt']['oracle']['all']:.3f}")
    print_choice_scores(report["results"], list(VARIANTS), 22)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
