"""Shared helpers: seeding, batching, greedy decoding with the PyTorch model."""
from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import torch

from . import tokenizer as tok


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def setup_threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set


def warmup_cosine_lr(lr: float, step: int, steps: int, floor: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay from lr down to floor * lr."""
    warm = max(1, steps // 20)
    return lr * min(1.0, (step + 1) / warm) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps)))


def sft_batch(pairs, pad_id: int = tok.EOS_ID):
    """pairs: list of (prompt, answer) -> (inputs, targets, mask) for answer-only loss.

    sequence = BOS prompt answer EOS; loss on the answer tokens and the final EOS."""
    seqs, starts = [], []
    for p, a in pairs:
        pi = tok.encode(p)
        ai = tok.encode(a, bos=False, eos=True)
        seqs.append(pi + ai)
        starts.append(len(pi))
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        x[i, : len(s)] = torch.tensor(s)
        m[i, st: len(s)] = True
    # predict token t from positions < t
    return x[:, :-1], x[:, 1:], m[:, 1:]


@torch.no_grad()
def greedy_generate(model, prompts, max_new: int = 32, batch: int = 64):
    """Greedy decoding (stops at EOS). Returns decoded answers in input order."""
    model.eval()
    out = [None] * len(prompts)
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        ids = tok.encode(p)
        groups[len(ids)].append((i, ids))
    for _, items in sorted(groups.items()):
        for s in range(0, len(items), batch):
            chunk = items[s: s + batch]
            x = torch.tensor([ids for _, ids in chunk], dtype=torch.long)
            done = torch.zeros(len(chunk), dtype=torch.bool)
            gen = [[] for _ in chunk]
            for _ in range(max_new):
                nxt = model(x)[:, -1].argmax(-1)
                for j in range(len(chunk)):
                    if not done[j]:
                        if int(nxt[j]) == tok.EOS_ID:
                            done[j] = True
                        else:
                            gen[j].append(int(nxt[j]))
                if bool(done.all()):
                    break
                x = torch.cat([x, nxt[:, None]], dim=1)
            for (i, _), g in zip(chunk, gen):
                out[i] = tok.decode(g)
    model.train()
    return out


def exact_match(preds, answers) -> float:
    return sum(p == a for p, a in zip(preds, answers)) / max(1, len(answers))
