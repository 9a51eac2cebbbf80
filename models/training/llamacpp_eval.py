"""Run the exported GGUF files through libllama (llama-cpp-python): logits check and greedy task eval.

    python -m models.training.llamacpp_eval --models models/default   # accuracy table, base vs adapters
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os

import numpy as np

from . import tokenizer as tok


def load_llama(model_path: str, n_ctx: int = 256, threads: int = 2, lora_path: str | None = None):
    import llama_cpp
    return llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=True, verbose=False, seed=0,
                           lora_path=lora_path)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """All-position logits (T, n_vocab) for token ids (positions 0..T-1)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


class AdapterSwitcher:
    """Loads adapters once (llama_adapter_lora_init) and activates one or none on the context."""

    def __init__(self, llm):
        self.llm = llm
        self.adapters = {}

    def load(self, name: str, path: str):
        import llama_cpp
        ad = llama_cpp.llama_adapter_lora_init(self.llm._model.model, path.encode("utf-8"))
        if ad is None:
            raise RuntimeError(f"llama_adapter_lora_init failed for {path}")
        self.adapters[name] = ad

    def use(self, name: str | None, scale: float = 1.0):
        import llama_cpp
        if name is None:
            rc = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        else:
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[name])
            sc = (ctypes.c_float * 1)(scale)
            rc = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr, 1, sc)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self.llm.reset()

    def free(self):
        import llama_cpp
        self.use(None)
        for ad in self.adapters.values():
            llama_cpp.llama_adapter_lora_free(ad)
        self.adapters.clear()


def llama_greedy(llm, prompt: str, max_new: int = 32) -> str:
    ids = tok.encode(prompt)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(max_new):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt == tok.EOS_ID:
            break
        out.append(nxt)
        llm.eval([nxt])
    return tok.decode(out)


def eval_table(model_path: str, adapter_dir: str, items: list[dict], threads: int = 2, log=print) -> dict:
    """Exact-match per task for: base alone, and base + that task's adapter (from adapter_dir/<task>.gguf)."""
    llm = load_llama(model_path, threads=threads)
    sw = AdapterSwitcher(llm)
    tasks = sorted({it["task"] for it in items}, key=[it["task"] for it in items].index)
    res = {}
    for t in tasks:
        its = [it for it in items if it["task"] == t]
        sw.use(None)
        base = sum(llama_greedy(llm, it["prompt"]) == it["answer"] for it in its) / len(its)
        sw.load(t, os.path.join(adapter_dir, f"{t}.gguf"))
        sw.use(t)
        preds = [llama_greedy(llm, it["prompt"]) for it in its]
        acc = sum(p == it["answer"] for p, it in zip(preds, its)) / len(its)
        res[t] = {"base": base, "adapter": acc, "n": len(its)}
        log(f"[llama.cpp] {t:14s} base {base:.2f}  adapter {acc:.2f}  (n={len(its)})  e.g. {its[0]['prompt']!r} -> {preds[0]!r}")
    sw.free()
    llm.close()
    return res


def main():
    from .tasks import heldout_eval
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models/default")
    ap.add_argument("--base", default="base-f16.gguf")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    res = eval_table(os.path.join(a.models, a.base), os.path.join(a.models, "adapters"), heldout_eval(), a.threads)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
