"""Checks that the shipped models in models/default load and work in llama-cpp-python.

    .venv/bin/python -m pytest models/training/test_models.py -q

Needs llama-cpp-python, gguf, numpy (torch only for the PyTorch-vs-libllama test, skipped without it).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from models.training import tokenizer as tok  # noqa: E402
from models.training.llamacpp_eval import AdapterSwitcher, llama_greedy, load_llama  # noqa: E402
from models.training.tasks import TASK_NAMES, heldout_eval  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "default")
needs_models = pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "manifest.json")),
                                  reason="models/default not built")


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(MODELS, "manifest.json")) as f:
        return json.load(f)


@needs_models
def test_manifest_and_sizes(manifest):
    assert len(manifest["tasks"]) >= 10
    assert len({t["prompt_format"] for t in manifest["tasks"]}) == len(manifest["tasks"])
    total = 0
    for root, _, files in os.walk(MODELS):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert total <= 25 * 1024 * 1024
    for t in manifest["tasks"]:
        assert os.path.exists(os.path.join(MODELS, t["adapter"]))


@needs_models
def test_eval_file_matches_generator():
    with open(os.path.join(MODELS, "eval.jsonl")) as f:
        items = [json.loads(line) for line in f]
    assert items == heldout_eval()
    for name in TASK_NAMES:
        assert sum(it["task"] == name for it in items) >= 50


@needs_models
@pytest.mark.parametrize("base", ["base-f16.gguf", "base-q8_0.gguf"])
def test_tokenizer_identical(base):
    items = heldout_eval()
    texts = [it["prompt"] + it["answer"] for it in items]
    assert tok.check_with_llama_cpp(os.path.join(MODELS, base), texts) == 0


@needs_models
@pytest.mark.parametrize("base", ["base-f16.gguf", "base-q8_0.gguf"])
def test_adapters_solve_their_task_and_base_fails(manifest, base):
    llm = load_llama(os.path.join(MODELS, base), threads=2)
    sw = AdapterSwitcher(llm)
    items = heldout_eval(n_per_task=10)
    for t in manifest["tasks"]:
        its = [it for it in items if it["task"] == t["task"]]
        sw.use(None)
        base_ok = sum(llama_greedy(llm, it["prompt"]) == it["answer"] for it in its)
        sw.load(t["task"], os.path.join(MODELS, t["adapter"]))
        sw.use(t["task"])
        ok = sum(llama_greedy(llm, it["prompt"]) == it["answer"] for it in its)
        assert base_ok <= 3, (t["task"], base_ok)
        assert ok >= 6, (t["task"], ok)
    sw.free()
    llm.close()


@needs_models
def test_high_level_lora_path(manifest):
    """llama_cpp.Llama(lora_path=...) + create_completion, as a plain llama-cpp-python user would."""
    t = manifest["tasks"][0]
    llm = llama_cpp.Llama(model_path=os.path.join(MODELS, "base-f16.gguf"), lora_path=os.path.join(MODELS, t["adapter"]),
                          n_ctx=256, verbose=False, seed=0)
    ex = [it for it in heldout_eval(n_per_task=5) if it["task"] == t["task"]]
    good = 0
    for it in ex:
        out = llm.create_completion(it["prompt"], max_tokens=32, temperature=0.0)
        good += out["choices"][0]["text"] == it["answer"]
    assert good >= 3
    llm.close()


@needs_models
def test_torch_logits_match_llama_cpp(tmp_path):
    torch = pytest.importorskip("torch")
    from models.training.export_gguf import write_base_gguf
    from models.training.llamacpp_eval import llama_logits
    base_pt = os.path.join(ROOT, "training", "build", "base.pt")
    if not os.path.exists(base_pt):
        pytest.skip("no build/base.pt (run make_all first)")
    from models.training.train_base import load_base
    model = load_base(base_pt).eval()
    path = str(tmp_path / "f32.gguf")
    write_base_gguf(model, path, "f32")
    llm = load_llama(path, threads=2)
    for it in heldout_eval(n_per_task=1):
        ids = tok.encode(it["prompt"] + it["answer"])
        with torch.no_grad():
            ref = model(torch.tensor([ids]))[0].numpy()
        got = llama_logits(llm, ids)
        assert np.abs(ref - got).max() <= 2e-3 * np.abs(ref).max()
    llm.close()
