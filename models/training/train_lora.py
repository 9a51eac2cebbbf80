"""Train one LoRA adapter per task on top of the frozen base model.

    python -m models.training.train_lora --base build/base.pt --task reverse --out build/reverse.pt
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from .common import exact_match, greedy_generate, set_seed, setup_threads, sft_batch, warmup_cosine_lr
from .model import LORA_TARGETS, LlamaModel
from .tasks import TASK_BY_NAME, train_examples


def train_lora(model: LlamaModel, task: str, steps: int = 400, batch: int = 32, rank: int = 8, alpha: float = 16.0,
               lr: float = 4e-3, seed: int = 1, targets=LORA_TARGETS, log=print,
               a_init_scale: float = 1.0, weight_decay: float = 0.0) -> dict:
    """Attach a fresh LoRA to `model` (base frozen), train it on `task`; returns lora_state()."""
    set_seed(seed)
    model.remove_lora()
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_lora(rank, alpha, seed=seed, targets=targets, a_init_scale=a_init_scale)
    params = model.lora_parameters()
    for p in params:
        p.requires_grad_(True)
    data = train_examples(task, steps * batch, seed=seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    t0 = time.time()
    model.train()
    for step in range(steps):
        cur_lr = warmup_cosine_lr(lr, step, steps, floor=0.05)
        for gr in opt.param_groups:
            gr["lr"] = cur_lr
        x, y, m = sft_batch(data[step * batch: (step + 1) * batch])
        logits = model(x)
        loss = F.cross_entropy(logits[m], y[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"lora {task} step {step:4d} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    for p in model.base_parameters():
        p.requires_grad_(True)
    return model.lora_state()


def main():
    from .train_base import load_base
    from .tasks import heldout_eval
    from .common import setup_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--task", required=True, choices=list(TASK_BY_NAME))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    setup_threads(a.threads)
    model = load_base(a.base)
    ev = [it for it in heldout_eval() if it["task"] == a.task]
    base_acc = exact_match(greedy_generate(model, [e["prompt"] for e in ev]), [e["answer"] for e in ev])
    state = train_lora(model, a.task, a.steps, rank=a.rank, alpha=a.alpha, lr=a.lr, seed=a.seed)
    preds = greedy_generate(model, [e["prompt"] for e in ev])
    acc = exact_match(preds, [e["answer"] for e in ev])
    print(f"{a.task}: base {base_acc:.2f} -> lora {acc:.2f}; e.g. {ev[0]['prompt']!r} -> {preds[0]!r}")
    torch.save({"task": a.task, "rank": a.rank, "alpha": a.alpha, "lora": state}, a.out)


if __name__ == "__main__":
    main()
