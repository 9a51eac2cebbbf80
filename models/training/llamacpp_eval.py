"""Accuracy of the base model and of each task's own adapter, measured through llama-cpp-python.

    python -m models.training.llamacpp_eval --pool models/pool [--tasks a,b] [--per-task 36] [--formats raw,chat]

llama.cpp is the oracle here, not our runtime: the base GGUF is loaded with flash attention on (logo-cpp's
attention path) and off ggml's AMX layout (``logo_cpp._llama_cpp``); adapters are applied with
``llama_adapter_lora_init`` / ``llama_set_adapters_lora`` at scale 1. Decoding is greedy; it stops at an
end-of-generation token, after ``max_tokens`` of the task, or at the first newline after some text (scoring
reads the first non-empty line only).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from logo_cpp import tasks as task_meta

from .hf_base import base_gguf_path
from .prompting import Prompter


class LlamaRunner:
    """One llama.cpp context over the base GGUF, with any number of loaded adapters, one active at a time."""

    def __init__(self, base_path: str | Path | None = None, n_ctx: int = 512, threads: int = 1):
        import llama_cpp

        from logo_cpp._llama_cpp import avoid_amx

        avoid_amx()
        self.base_path = str(base_path or base_gguf_path())
        self.llm = llama_cpp.Llama(self.base_path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, flash_attn=True, verbose=False, seed=0)
        self.prompter = Prompter(self.base_path)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.adapters: dict[str, object] = {}

    def load(self, name: str, path: str | Path) -> None:
        import llama_cpp

        handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode())
        if not handle:
            raise ValueError(f"{path}: llama.cpp refused the adapter")
        self.adapters[name] = handle

    def use(self, name: str | None) -> None:
        """Makes adapter ``name`` (scale 1) the only active one, or none; clears the KV cache."""
        import llama_cpp

        if name is None:
            rc = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[name])
            rc = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self.llm.reset()

    def _last_logits(self) -> np.ndarray:
        import llama_cpp

        # without logits_all, llama-cpp-python keeps no copy: read llama.cpp's buffer for the last token
        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (n_vocab,) float32 at the last of ``ids``, with the active adapter."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(ids)
        return self._last_logits()

    def greedy(self, prompt: str, max_tokens: int, give_up_after: int | None = None) -> str:
        """Greedy completion of ``prompt`` (special tokens parsed) with the active adapter.

        ``give_up_after``: stop once the first line holds more non-space characters than this (a prediction
        that long cannot match a short reference under ``logo_cpp.tasks.normalize``; saves the base model's
        rambling)."""
        import llama_cpp

        ids = self.prompter.tokenize(prompt)
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(max_tokens):
            token = int(np.argmax(self._last_logits()))
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                break
            out.append(token)
            text = self.prompter.detokenize(out)
            if "\n" in text and text.strip():
                break
            if give_up_after is not None and len("".join(text.split())) > give_up_after:
                break
            self.llm.eval([token])
        return self.prompter.detokenize(out)

    def prompt(self, item: dict, fmt: str) -> str:
        """The prompt string of an eval item in format "raw" (its "prompt") or "chat" (its "messages")."""
        if fmt == "raw":
            return item["prompt"]
        if fmt == "chat":
            return self.prompter.chat_prompt(item["messages"])
        raise ValueError(f"format {fmt!r}: expected 'raw' or 'chat'")

    def accuracy(self, items: list[dict], fmt: str, adapter: str | None) -> tuple[float, list[str]]:
        self.use(adapter)
        preds, total = [], 0.0
        for item in items:
            limit = 3 * len(item["answer"]) + 16
            pred = self.greedy(self.prompt(item, fmt), task_meta.get_task(item["task"]).max_tokens, limit)
            preds.append(pred)
            total += task_meta.score(item["task"], pred, item["answer"])
        return total / max(1, len(items)), preds

    def close(self) -> None:
        import llama_cpp

        self.use(None)
        for handle in self.adapters.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self.adapters.clear()
        self.llm.close()


BASE_CACHE = Path(__file__).resolve().parent / "build" / "base_accuracy.json"


def _base_accuracy(runner: LlamaRunner, items: list[dict], fmt: str) -> float:
    """The base model's accuracy, cached by the exact items (it does not depend on the pool)."""
    key = hashlib.sha256(json.dumps([items, fmt, runner.base_path], sort_keys=True).encode()).hexdigest()
    cache = json.loads(BASE_CACHE.read_text()) if BASE_CACHE.exists() else {}
    if key not in cache:
        cache[key], _ = runner.accuracy(items, fmt, None)
        BASE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        BASE_CACHE.write_text(json.dumps(cache, indent=0))
    return cache[key]


def evaluate_tasks(pool: Path, tasks: list[str], per_task: int | None, formats: list[str], threads: int = 1,
                   log=print) -> dict:
    """{task: {"base": {fmt: acc}, "own": {fmt: acc}, "n": n}} on the first ``per_task`` eval items."""
    items = task_meta.load_eval(pool / "eval.jsonl")
    runner = LlamaRunner(threads=threads)
    results = {}
    try:
        for task in tasks:
            mine = [it for it in items if it["task"] == task][:per_task]
            runner.load(task, pool / "adapters" / f"{task}.gguf")
            row = {"base": {}, "own": {}, "n": len(mine)}
            t0 = time.time()
            for fmt in formats:
                row["base"][fmt] = _base_accuracy(runner, mine, fmt)
                row["own"][fmt], preds = runner.accuracy(mine, fmt, task)
                row.setdefault("example", {})[fmt] = {"prompt": mine[0]["prompt"], "answer": mine[0]["answer"],
                                                      "own": preds[0]}
            results[task] = row
            log(f"[llama.cpp] {task:15s} " + "  ".join(
                f"{fmt}: base {row['base'][fmt]:.2f} own {row['own'][fmt]:.2f}" for fmt in formats)
                + f"  (n={len(mine)}, {time.time() - t0:.0f} s)")
    finally:
        runner.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=Path("models/pool"))
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every in-pool task)")
    ap.add_argument("--per-task", type=int, default=None)
    ap.add_argument("--formats", default="raw,chat")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (ggml's threads spin while waiting: on a shared CPU 1 beat 2 by 20x)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    tasks = args.tasks.split(",") if args.tasks else list(task_meta.IN_POOL)
    res = evaluate_tasks(args.pool, tasks, args.per_task, args.formats.split(","), args.threads)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
