"""Build everything in models/default/ from scratch (deterministic):

    python -m models.training.make_all [--threads 2] [--out models/default]

1. tokenizer: write a vocab GGUF, check libllama tokenizes every training/eval text like tokenizer.py
2. pretrain the base model (train_base.py) on the generic + tagged-skill corpus
3. export base-f16.gguf and base-q8_0.gguf, check libllama logits == PyTorch logits
4. one LoRA per task (train_lora.py), export adapters/<task>.gguf, check one adapter's logits
5. eval.jsonl (fixed-seed held-out mixed-task set), accuracy of base vs own adapter through
   llama-cpp-python, manifest.json
Use --quick for a smoke run (tiny step counts, output to a scratch dir).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import tokenizer as tok
from .common import exact_match, greedy_generate, setup_threads
from .export_gguf import write_base_gguf, write_lora_gguf, write_vocab_gguf
from .model import LORA_TARGETS
from .tasks import EVAL_PER_TASK, EVAL_SEED, LORA_STEP_MULT, TASKS, base_corpus, heldout_eval, train_examples
from .train_base import load_base, train_base
from .train_lora import train_lora

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def logits_check(model, gguf_path: str, texts, threads: int, lora=None) -> float:
    """max over texts of max|torch - llama.cpp| / max|torch| (all positions)."""
    from .llamacpp_eval import AdapterSwitcher, llama_logits, load_llama
    llm = load_llama(gguf_path, threads=threads)
    sw = None
    if lora is not None:
        sw = AdapterSwitcher(llm)
        sw.load("x", lora)
        sw.use("x")
    worst = 0.0
    model.eval()
    for t in texts:
        ids = tok.encode(t)
        with torch.no_grad():
            ref = model(torch.tensor([ids]))[0].numpy()
        got = llama_logits(llm, ids)
        worst = max(worst, float(np.abs(ref - got).max() / np.abs(ref).max()))
    if sw:
        sw.free()
    llm.close()
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "models", "default"))
    ap.add_argument("--workdir", default=os.path.join(HERE, "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-steps", type=int, default=2400)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lora-lr", type=float, default=4e-3)
    ap.add_argument("--lora-a-init", type=float, default=1.0, help="scale of A's kaiming-uniform bound")
    ap.add_argument("--lora-wd", type=float, default=0.0, help="AdamW weight decay on the LoRA A and B")
    ap.add_argument("--lora-targets", default=",".join(LORA_TARGETS),
                    help="comma-separated matrices each LoRA adapts (default: all seven per block)")
    ap.add_argument("--lora-step-mult", default="", help="'none' = equal steps for every task")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tasks", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--reuse-base", action="store_true", help="reuse workdir/base.pt if present")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny step counts")
    a = ap.parse_args(argv)
    if a.quick:
        a.base_steps, a.lora_steps = 30, 20
    setup_threads(a.threads)
    os.makedirs(a.workdir, exist_ok=True)
    os.makedirs(os.path.join(a.out, "adapters"), exist_ok=True)
    t_start = time.time()
    timings = {}

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    targets = tuple(a.lora_targets.split(","))
    if not targets or any(t not in LORA_TARGETS for t in targets):
        sys.exit(f"--lora-targets: expected a comma-separated subset of {','.join(LORA_TARGETS)}")
    step_mult = {} if a.lora_step_mult == "none" else LORA_STEP_MULT
    tasks = [t for t in TASKS if not a.tasks or t.name in a.tasks.split(",")]
    eval_items = heldout_eval()

    # 1. tokenizer check -----------------------------------------------------------------------
    vocab_path = os.path.join(a.workdir, "vocab.gguf")
    write_vocab_gguf(vocab_path)
    texts = [it["prompt"] for it in eval_items] + [it["prompt"] + it["answer"] for it in eval_items]
    for t in TASKS:
        texts += [p + ans for p, ans in train_examples(t, 300, seed=1)]
    texts += base_corpus(300, a.seed)
    bad = tok.check_with_llama_cpp(vocab_path, texts)
    log(f"tokenizer check: {len(texts)} texts, {bad} mismatches vs libllama")
    if bad:
        sys.exit("tokenizer mismatch with libllama")

    # 2. base -----------------------------------------------------------------------------------
    base_pt = os.path.join(a.workdir, "base.pt")
    t0 = time.time()
    if a.reuse_base and os.path.exists(base_pt):
        model = load_base(base_pt)
        log("reusing " + base_pt)
    else:
        model = train_base(base_pt, steps=a.base_steps, seed=a.seed, threads=a.threads, log=log)
    timings["base_train_s"] = round(time.time() - t0, 1)
    model.eval()

    # 3. export base ------------------------------------------------------------------------------
    f32_path = os.path.join(a.workdir, "base-f32.gguf")
    f16_path = os.path.join(a.out, "base-f16.gguf")
    q8_path = os.path.join(a.out, "base-q8_0.gguf")
    write_base_gguf(model, f32_path, "f32")
    write_base_gguf(model, f16_path, "f16")
    write_base_gguf(model, q8_path, "q8_0")
    check_texts = [it["prompt"] + it["answer"] for it in eval_items[: 2 * len(TASKS)]]
    checks = {
        "base_f32_rel_err": logits_check(model, f32_path, check_texts, a.threads),
        "base_f16_rel_err": logits_check(model, f16_path, check_texts, a.threads),
        "base_q8_0_rel_err": logits_check(model, q8_path, check_texts, a.threads),
    }
    log(f"logits check (max |torch - llama.cpp| / max|torch|): {checks}")
    if checks["base_f32_rel_err"] > 2e-3:
        sys.exit("F32 export does not match PyTorch")

    # 4. adapters ---------------------------------------------------------------------------------
    torch_acc = {}
    adapters = {}
    t0 = time.time()
    for i, t in enumerate(tasks):
        ev = [it for it in eval_items if it["task"] == t.name]
        prompts, answers = [it["prompt"] for it in ev], [it["answer"] for it in ev]
        model.remove_lora()
        base_acc = exact_match(greedy_generate(model, prompts), answers)
        state = train_lora(model, t.name, steps=int(a.lora_steps * step_mult.get(t.name, 1.0)), rank=a.rank, alpha=a.alpha,
                           lr=a.lora_lr, seed=100 + i, targets=targets, log=log, a_init_scale=a.lora_a_init, weight_decay=a.lora_wd)
        acc = exact_match(greedy_generate(model, prompts), answers)
        torch_acc[t.name] = {"base": base_acc, "adapter": acc}
        path = os.path.join(a.out, "adapters", f"{t.name}.gguf")
        write_lora_gguf(state, a.alpha, path, task=t.name, prompt_format=t.template)
        adapters[t.name] = state
        log(f"[torch] {t.name:14s} base {base_acc:.2f} -> adapter {acc:.2f}")
        if i == 0:
            checks[f"lora_{t.name}_f32_rel_err"] = logits_check(model, f32_path, prompts[:4], a.threads, lora=path)
            log(f"lora logits check: {checks[f'lora_{t.name}_f32_rel_err']:.2e}")
    model.remove_lora()
    timings["lora_train_s"] = round(time.time() - t0, 1)

    # 5. eval set + llama.cpp accuracy + manifest ----------------------------------------------
    with open(os.path.join(a.out, "eval.jsonl"), "w") as f:
        for it in eval_items:
            f.write(json.dumps(it) + "\n")
    from .llamacpp_eval import eval_table
    t0 = time.time()
    sel = [it for it in eval_items if it["task"] in {t.name for t in tasks}]
    llama_acc = eval_table(f16_path, os.path.join(a.out, "adapters"), sel, threads=a.threads, log=log)
    timings["llamacpp_eval_s"] = round(time.time() - t0, 1)

    cfg = model.cfg
    manifest = {
        "name": "logo-tiny-default",
        "description": "Tiny Llama-architecture base model + one LoRA per synthetic task, built by "
                       "models/training/make_all.py (deterministic).",
        "base": {"f16": "base-f16.gguf", "q8_0": "base-q8_0.gguf",
                 "config": cfg.to_dict(), "n_params": sum(p.numel() for p in model.base_parameters())},
        "tokenizer": {"type": "llama (SPM), character pieces + byte fallback", "n_vocab": tok.N_VOCAB,
                      "bos_id": tok.BOS_ID, "eos_id": tok.EOS_ID, "add_bos": True, "add_space_prefix": False},
        "lora": {"rank": a.rank, "alpha": a.alpha, "scale": a.alpha / a.rank, "targets": list(targets),
                 "dtype": "f32"},
        "generation": {"greedy": True, "stop": "EOS (id 2)", "max_new_tokens": 32,
                       "prompt": "BOS + prompt text exactly as given (answer follows directly)"},
        "eval": {"file": "eval.jsonl", "seed": EVAL_SEED, "per_task": EVAL_PER_TASK,
                 "generator": "models.training.tasks.heldout_eval",
                 "note": "held-out prompts (and their inputs) never appear in base or LoRA training data"},
        "tasks": [],
        "checks": checks,
        "seeds": {"base": a.seed, "lora": "100 + task index", "eval": EVAL_SEED},
        "build": {"threads": a.threads, "base_steps": a.base_steps, "lora_steps": a.lora_steps, "lora_step_mult": step_mult,
                  "lora_lr": a.lora_lr, "lora_a_init": a.lora_a_init, "lora_wd": a.lora_wd,
                  "torch": torch.__version__, "python": platform.python_version(), "timings_s": timings},
    }
    for t in tasks:
        ex = train_examples(t, 3, seed=999)
        manifest["tasks"].append({
            "task": t.name,
            "description": t.description,
            "adapter": f"adapters/{t.name}.gguf",
            "prompt_format": t.template,
            "examples": [{"prompt": p, "answer": ans} for p, ans in ex],
            "accuracy": {"llama_cpp_f16": llama_acc[t.name], "torch": torch_acc[t.name]},
        })
    files = ["base-f16.gguf", "base-q8_0.gguf", "eval.jsonl"] + [f"adapters/{t.name}.gguf" for t in tasks]
    manifest["files"] = {f: {"bytes": os.path.getsize(os.path.join(a.out, f)), "sha256": sha256(os.path.join(a.out, f))}
                         for f in files}
    timings["total_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    total = sum(v["bytes"] for v in manifest["files"].values())
    log(f"done: {len(tasks)} adapters, {total / 1e6:.2f} MB in {a.out}, total {timings['total_s']}s")
    log("accuracy (llama.cpp, held-out): " + ", ".join(
        f"{k}: {v['base']:.2f}->{v['adapter']:.2f}" for k, v in llama_acc.items()))


if __name__ == "__main__":
    main()
