"""Pretrain the small Llama base model on the generic synthetic corpus (tasks.base_corpus).

    python -m models.training.train_base --out build/base.pt --steps 1500 --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from . import tokenizer as tok
from .common import set_seed, setup_threads, warmup_cosine_lr
from .model import LlamaModel, ModelConfig
from .tasks import base_corpus_segments


def packed_stream(n_docs: int, seed: int, seq_len: int):
    """Tokenize docs as BOS text EOS, concatenate, cut into (N, seq_len+1) rows.

    Returns (tokens, loss_mask) where loss_mask[i, j] says whether token j is a training target
    (skill prompts are context only; their answers, line ends and all generic text are targets)."""
    ids, mask = [], []
    for doc in base_corpus_segments(n_docs, seed):
        ids.append(tok.BOS_ID)
        mask.append(False)
        for text, train_on in doc:
            t = tok.encode(text, bos=False)
            ids.extend(t)
            mask.extend([train_on] * len(t))
        ids.append(tok.EOS_ID)
        mask.append(True)
    n = len(ids) // (seq_len + 1)
    x = torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)
    m = torch.tensor(mask[: n * (seq_len + 1)], dtype=torch.bool).view(n, seq_len + 1)
    return x, m


def train_base(out_path: str, steps: int = 1500, batch: int = 32, seq_len: int = 128, lr: float = 3e-3,
               seed: int = 1234, threads: int = 2, cfg: ModelConfig | None = None, log=print) -> LlamaModel:
    setup_threads(threads)
    set_seed(seed)
    cfg = cfg or ModelConfig(n_vocab=tok.N_VOCAB)
    model = LlamaModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    # enough documents for ~1 epoch over the requested number of tokens
    need = steps * batch
    data, dmask = packed_stream(max(1000, need // 3 + 500), seed, seq_len)
    while data.shape[0] < need:
        d2, m2 = packed_stream(need // 3 + 500, seed + data.shape[0], seq_len)
        data, dmask = torch.cat([data, d2]), torch.cat([dmask, m2])
    log(f"base: {n_params} params, {data.shape[0]} rows x {seq_len + 1} tokens, {steps} steps")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(data.shape[0], generator=g)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    t0 = time.time()
    model.train()
    for step in range(steps):
        cur_lr = warmup_cosine_lr(lr, step, steps, floor=0.1)
        for gr in opt.param_groups:
            gr["lr"] = cur_lr
        idx = perm[(step * batch) % data.shape[0]: (step * batch) % data.shape[0] + batch]
        if idx.numel() < batch:
            idx = perm[:batch]
        xb, mb = data[idx], dmask[idx][:, 1:]
        logits = model(xb[:, :-1])
        loss = F.cross_entropy(logits[mb], xb[:, 1:][mb])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"base step {step:5d} loss {loss.item():.4f} lr {cur_lr:.2e} {time.time() - t0:.0f}s")
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, out_path)
    return model


def load_base(path: str) -> LlamaModel:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = LlamaModel(ModelConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    train_base(a.out, a.steps, a.batch, lr=a.lr, seed=a.seed, threads=a.threads)


if __name__ == "__main__":
    main()
