"""The shipped default model (models/default): llama.cpp loads and runs it and its adapters, our
runtime agrees with it, and the demo and eval commands work on it."""

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import logo_cpp
from logo_cpp.default_model import load_toy_manifest, read_eval_set

from conftest import THREADS


@pytest.fixture(scope="module")
def shipped():
    model_dir, manifest = load_toy_manifest()
    return model_dir, manifest, read_eval_set(model_dir, manifest)


def test_manifest_and_size(shipped):
    model_dir, manifest, items = shipped
    total = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert total <= 25 * 2**20
    assert len(manifest["tasks"]) >= 10
    for task in manifest["tasks"]:
        assert (model_dir / task["adapter"]).exists() and task["prompt_format"] and task["examples"]
        assert sum(it["task"] == task["task"] for it in items) >= 50


@pytest.mark.parametrize("weights", ["f16", "q8_0"])
def test_llama_cpp_runs_the_base_and_adapters_and_agrees_with_us(shipped, weights):
    import llama_cpp as lc

    model_dir, manifest, items = shipped
    path = model_dir / manifest["base"][weights]
    llm = lc.Llama(model_path=str(path), n_ctx=256, n_threads=THREADS, logits_all=True, verbose=False, flash_attn=True)
    ours = logo_cpp.Model(path, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(ours, model_dir / "adapters")
    solved = 0
    for task in manifest["tasks"]:
        item = next(it for it in items if it["task"] == task["task"])
        ids = ours.tokenize(item["prompt"])
        assert ids == llm.tokenize(item["prompt"].encode(), add_bos=True, special=True)
        handle = lc.llama_adapter_lora_init(llm.model, str(model_dir / task["adapter"]).encode())
        assert handle, task["adapter"]
        lc.llama_set_adapters_lora(llm.ctx, (lc.llama_adapter_lora_p_ctypes * 1)(handle), 1, (ctypes.c_float * 1)(1.0))
        llm.reset()
        llm.eval(ids)
        theirs = []
        for _ in range(24):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if tok == llm.token_eos():
                break
            theirs.append(tok)
            llm.eval([tok])
        lc.llama_set_adapters_lora(llm.ctx, None, 0, None)
        out = ours.generate(ids, max_tokens=24, temperature=0.0, adapters={task["task"]: 1.0})
        assert out.tokens == theirs, task["task"]
        solved += out.text.strip() == item["answer"]
    assert solved >= len(manifest["tasks"]) * 0.7  # each adapter solves its own task (the oracle)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent)


@pytest.mark.parametrize("k", [None, 3])
def test_demo(shipped, k):
    out = _cli("demo", "--threads", str(THREADS), *(["--k", k] if k else []))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("LoGo chose") >= 5 and "base model" in out.stdout and "own adapter" in out.stdout
    assert f"LoGo k={k or 1}" in out.stdout and "correct" in out.stdout
    chosen = [line.split("LoGo chose")[1].split("(next")[0] for line in out.stdout.splitlines() if "LoGo chose" in line]
    assert all(part.count(",") == (k or 1) - 1 for part in chosen), chosen


def test_eval_quick_writes_json_markdown_and_plots(shipped, tmp_path):
    out = _cli("eval", "--quick", "--per-task", "5", "--threads", str(THREADS), "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"base", "oracle", "uniform", "top1", "logo-norm k=1", "logo-entropy k=3"} <= set(report["accuracy"])
    assert report["accuracy"]["oracle"]["overall"] > report["accuracy"]["base"]["overall"]
    assert (tmp_path / "eval.md").exists()
    # progress on a pipe: one finished line per stage, no carriage-return redraws
    assert "\r" not in out.stderr and "probing" in out.stderr and "60/60" in out.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "signals_heatmap.png").exists()
