"""`logo-cpp bench quant` end to end on a tiny model: it quantizes the base, writes adapters on the blocks
asked for, runs both runtimes side by side and writes its report (the numbers themselves are not checked:
speed is measured in the benchmark window, never asserted in tests)."""

import json
import subprocess
import sys


def test_bench_quant_runs_and_reports(model_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "logo_cpp.cli", "bench", "quant", "--model", str(model_dir / "llama256-f32.gguf"),
         "--types", "q4_1", "--ks", "1", "2", "--kernels-off", "2", "--fold", "2", "--upcast", "2", "--layers", "1-1", "--reps", "1", "--prompt", "8", "--decode", "4",
         "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # llama.cpp's loader and context logs stay off the output (hundreds of lines per model before)
    assert "llama_model_loader" not in out.stderr and "llama_context" not in out.stderr, out.stderr[:2000]
    data = json.loads((tmp_path / "out" / "quant-llama256-f32-blk1-1.json").read_text())
    rows = data["types"]["q4_1"]["rows"]
    assert set(rows) == {"0", "1", "2", "2-ggml", "2-fold", "2-upcast"}
    for only_ours in ("2-ggml", "2-fold", "2-upcast"):
        assert rows[only_ours]["llama_decode"] is None  # logo-cpp alone
    for fold in ("2-fold", "2-upcast"):
        assert rows[fold]["logo_decode"] > 0 and rows[fold]["logo_setup"] >= 0
    assert "blocks 1-1" in data["adapters"]
    adapters = sorted((tmp_path / "work").glob("adapters-*-blk1-1/*.gguf"))
    assert len(adapters) == 2
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(str(adapters[0])).tensors}
    assert names == {f"blk.1.{m}.weight.lora_{x}" for m in ("attn_q", "attn_v") for x in "ab"}
    report = (tmp_path / "out" / "quant-llama256-f32-blk1-1.md").read_text()
    assert "| base |" in report and "| 2 |" in report and "| 2 (ggml matmuls) |" in report
    assert "| 2 (requantized fold) |" in report and "| 2 (upcast fold) |" in report


def test_bench_quant_rejects_bad_layers(tmp_path):
    out = subprocess.run([sys.executable, "-m", "logo_cpp.cli", "bench", "quant", "--layers", "x-2"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "--layers: expected 'all' or FIRST-LAST" in out.stderr, out.stderr
