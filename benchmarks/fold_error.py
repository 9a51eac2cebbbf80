"""What the folds (fold="requantize", "requantize-stochastic", "upcast") cost in accuracy on the shipped model and
pool (issue 15, docs sections 11-12).

Two questions, each answered on the same held-out prompts of the shipped pool (models/pool/eval.jsonl, in-pool
tasks, the first --per-task items of each):

1. Logits (--logits): with teacher forcing over prompt + " " + answer, how far are the folded model's logits
   from the exact mixture's (max |diff|, mean KL(exact || fold) in nats, top-1 agreement over all positions),
   (each fold of --folds) next to how far the base model's are (the adapters' own effect, the scale to read the
   error against) and, with --llama, how far llama.cpp's are (flash attention, the adapter files at the same
   scales: the rounding the exact path itself differs by from the adapters' own precision), and each fold's
   from llama.cpp's ("<fold> vs llama.cpp": KL(llama.cpp || fold))? Per
   base type (the shipped Q4_1, and the Q4_K / Q8_0 files `logo-cpp bench quant` requantized from it), for the
   prompt's own adapter at weight 1 (k = 1) and the default router's top 3 with its weights (k = 3).
2. Accuracy (--accuracy): task accuracy of the default router at k = 1 and k = 3, greedy, exact vs fold, on the
   shipped Q4_1 (each fold of --folds), scored by logo_cpp.tasks.score (as `logo-cpp eval`).

    python benchmarks/fold_error.py --logits --accuracy --per-task 4 --threads 1 --out docs/bench/fold-error.json
    python benchmarks/fold_error.py --logits --llama --folds upcast --per-task 2 --threads 1 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import logo_cpp
from logo_cpp import default_model, tasks


FOLDS = ("requantize", "requantize-stochastic", "upcast")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, other: np.ndarray) -> dict:
    """max |diff|, mean KL(ref || other) (nats per position), top-1 agreement over positions."""
    lp, lq = log_softmax(ref), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {"max_abs": float(np.abs(ref - other).max()), "kl": float(kl.mean()),
            "top1": float(np.mean(ref.argmax(-1) == other.argmax(-1))), "n": int(ref.shape[0])}


def merge(parts: list[dict]) -> dict:
    n = sum(p["n"] for p in parts)
    return {"max_abs": max(p["max_abs"] for p in parts), "kl": sum(p["kl"] * p["n"] for p in parts) / n,
            "top1": sum(p["top1"] * p["n"] for p in parts) / n, "n": n}


def items(per_task: int) -> list[dict]:
    pool_tasks = set(default_model.adapter_files())
    chosen, seen = [], {}
    for item in default_model.read_eval_set():
        if item["task"] in pool_tasks and seen.get(item["task"], 0) < per_task:
            seen[item["task"]] = seen.get(item["task"], 0) + 1
            chosen.append(item)
    return chosen


def base_files() -> dict[str, Path]:
    q4_1 = Path(default_model.base_model_path())
    out = {"q4_1": q4_1}
    work = Path(os.environ.get("LOGO_BENCH_WORKDIR", Path.home() / ".cache" / "logo-cpp-bench")) / "quant-bases"
    for t in ("q4_k", "q8_0"):
        path = work / f"{q4_1.stem}.{t}.gguf"
        if path.exists():
            out[t] = path
    return out


class LlamaLogits:
    """llama.cpp's logits of a token sequence with pool adapters at given scales (flash attention, no AMX
    layouts: logo_cpp._llama_cpp), as tests/test_quantized_mixtures.py's oracle."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        from logo_cpp._llama_cpp import avoid_amx

        avoid_amx()
        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=threads,
                                   flash_attn=True, seed=0)
        self.files = default_model.adapter_files()
        self.handles = {}

    def logits(self, ids, mixture: dict) -> np.ndarray:
        import ctypes

        lc = self.lc
        for name in mixture:
            if name not in self.handles:
                self.handles[name] = lc.llama_adapter_lora_init(self.llm.model, str(self.files[name]).encode())
        handles = [self.handles[name] for name in mixture]
        arr = (lc.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        scales = (ctypes.c_float * len(handles))(*mixture.values())
        if lc.llama_set_adapters_lora(self.llm.ctx, arr, len(handles), scales) != 0:
            raise RuntimeError("llama_set_adapters_lora failed")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def logits_study(per_task: int, threads: int, folds, llama: bool) -> dict:
    chosen = items(per_task)
    out = {}
    for base, path in base_files().items():
        model = logo_cpp.Model(str(path), n_ctx=512, n_threads=threads, repack=False)
        pool = logo_cpp.AdapterPool(model, str(default_model.pool_dir() / "adapters"))
        router = logo_cpp.LoGo(model, pool, k=3)
        oracle = LlamaLogits(path, threads) if llama else None
        against_llama = ["llama.cpp", *(f"{fold} vs llama.cpp" for fold in folds)] if llama else []
        rows = {k: {what: [] for what in (*folds, "base", *against_llama)} for k in ("1", "3")}
        t0 = time.perf_counter()
        for item in chosen:
            ids = model.tokenize(item["prompt"] + " " + item["answer"])
            base_logits = model.logits(ids)
            routing = router.route(item["prompt"])
            for k, mixture in (("1", {item["task"]: 1.0}), ("3", routing.as_dict())):
                exact = model.logits(ids, adapters=mixture)
                folded = {fold: model.logits(ids, adapters=mixture, fold=fold) for fold in folds}
                for fold in folds:
                    rows[k][fold].append(compare(exact, folded[fold]))
                rows[k]["base"].append(compare(exact, base_logits))
                if oracle:
                    # llama.cpp keeps each adapter in its file's precision: the exact path's own rounding is the
                    # distance from it, and each fold's distance from it is read against that.
                    theirs = oracle.logits(ids, mixture)
                    rows[k]["llama.cpp"].append(compare(exact, theirs))
                    for fold in folds:
                        rows[k][f"{fold} vs llama.cpp"].append(compare(theirs, folded[fold]))
        out[base] = {"file": path.name, "seconds": time.perf_counter() - t0,
                     **{k: {what: merge(v) for what, v in r.items()} for k, r in rows.items()}}
        print(base, json.dumps({k: out[base][k] for k in ("1", "3")}), flush=True)
        pool.close()
        model.close()
        del oracle
    return {"prompts": len(chosen), "bases": out}


def accuracy_study(per_task: int, threads: int, folds) -> dict:
    chosen = items(per_task)
    model = logo_cpp.Model(str(default_model.base_model_path()), n_ctx=512, n_threads=threads, repack=False)
    pool = logo_cpp.AdapterPool(model, str(default_model.pool_dir() / "adapters"))
    out = {}
    for k in (1, 3):
        router = logo_cpp.LoGo(model, pool, k=k)
        scores = {"exact": [], **{fold: [] for fold in folds}}
        same = {fold: 0 for fold in folds}
        t0 = time.perf_counter()
        for item in chosen:
            mixture = router.route(item["prompt"]).as_dict()
            texts = {}
            for fold in scores:
                done = model.generate(item["prompt"], max_tokens=tasks.get_task(item["task"]).max_tokens,
                                      temperature=0.0, adapters=mixture, fold=fold)
                texts[fold] = done.text
                scores[fold].append(tasks.score(item["task"], done.text, item["answer"]))
            for fold in folds:
                same[fold] += texts["exact"] == texts[fold]
        out[str(k)] = {"n": len(chosen), "seconds": time.perf_counter() - t0,
                       **{mode: float(np.mean(v)) for mode, v in scores.items()},
                       "same_text": {fold: same[fold] / len(chosen) for fold in folds},
                       "paired": {fold: {"exact_only": int(sum(e > f for e, f in zip(scores["exact"], scores[fold]))),
                                         "fold_only": int(sum(f > e for e, f in zip(scores["exact"], scores[fold])))}
                                  for fold in folds}}
        print(f"k={k}", json.dumps(out[str(k)]), flush=True)
    base = [tasks.score(i["task"], model.generate(i["prompt"], max_tokens=tasks.get_task(i["task"]).max_tokens,
                                                  temperature=0.0).text, i["answer"]) for i in chosen]
    out["base"] = float(np.mean(base))
    print("base", out["base"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logits", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--folds", nargs="+", choices=FOLDS, default=list(FOLDS))
    parser.add_argument("--llama", action="store_true", help="--logits: also llama.cpp on the adapter files")
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    res = {"per_task": args.per_task, "threads": args.threads, "folds": args.folds, "load_before": os.getloadavg()}
    if args.logits:
        res["logits"] = logits_study(args.per_task, args.threads, args.folds, args.llama)
    if args.accuracy:
        res["accuracy"] = accuracy_study(args.per_task, args.threads, args.folds)
    res["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
