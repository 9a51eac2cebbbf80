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


def test_benchmarks_load_logo_cpp_with_llama_cpps_weight_layouts(model_dir, monkeypatch):
    # llama.cpp runs without repacked layouts where the CPU has AMX (logo_cpp._llama_cpp.model_params); a
    # benchmark must load ours the same way, or a Q4_0 row compares two layouts instead of two runtimes.
    from logo_cpp import _llama_cpp
    from logo_cpp.bench import common, core

    import logo_cpp

    seen = []

    original = logo_cpp.Model

    def recording(*args, **kwargs):
        seen.append(kwargs.get("repack", True))
        return original(*args, **kwargs)

    monkeypatch.setattr(logo_cpp, "Model", recording)
    for has_amx in (True, False):
        monkeypatch.setattr(_llama_cpp, "cpu_has_amx", lambda has_amx=has_amx: has_amx)
        assert common.repack() is (not has_amx)
        core.LogoRunner(model_dir / "llama-f32.gguf", threads=1, n_ctx=64)
        assert common.machine_info(1)["repacked_layouts"] is (not has_amx)
    assert seen == [False, True], seen
