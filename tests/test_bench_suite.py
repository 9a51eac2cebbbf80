"""`logo-cpp bench`'s mixture section on a tiny model: both runtimes run each k-adapter mixture and the
section reports medians and ratios to the base (the numbers themselves are not checked: speed is measured in
the benchmark window, never asserted in tests)."""

import math

from logo_cpp.bench import suite


def test_mixtures_section_runs_both_runtimes(model_dir, adapter_dir):
    adapters = sorted(adapter_dir.glob("*.gguf"))[:2]
    rows = suite.mixtures_section(model_dir / "llama-f32.gguf", adapters, threads=1, reps=1, n_prompt=8,
                                  n_decode=4, ks=[1, 2])
    assert set(rows) == {"0", "1", "2"}
    for k in ("1", "2"):
        for key in ("logo_prefill", "logo_decode", "llama_prefill", "llama_decode", "logo_decode_vs_base",
                    "llama_decode_vs_base"):
            assert math.isfinite(rows[k][key]) and rows[k][key] > 0, (k, key)
