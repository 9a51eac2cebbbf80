"""A tiny Llama-architecture transformer in PyTorch, laid out exactly like llama.cpp's "llama" graph.

Differences from Hugging Face's Llama that matter for the GGUF export:
  * RoPE is applied the way llama.cpp's rope type NORM does it: on *adjacent* pairs (2i, 2i+1)
    of each head, theta_i = pos * freq_base^(-2i/head_dim).  Hence no Q/K row permutation is needed
    when exporting (neither for the base weights nor for LoRA B matrices).
  * Weights are stored as nn.Linear (out, in) == GGUF numpy layout (n_out, n_in).

LoRA: every adapted linear layer computes  y = W x + (alpha / r) * B (A x)  which is exactly what
llama.cpp's build_lora_mm does with adapter scale 1.0 (scale = alpha / rank, rank = B.shape[1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    n_vocab: int = 354
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 384
    n_ctx: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)


LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class LoRALinear(nn.Module):
    """nn.Linear plus an optional low-rank update (A: (r, in), B: (out, r))."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.normal_(self.weight, std=0.02)
        self.lora_a = None
        self.lora_b = None
        self.lora_scale = 0.0

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator, a_init_scale: float = 1.0):
        n_out, n_in = self.weight.shape
        a = torch.empty(rank, n_in)
        # kaiming-uniform-like init for A (bound scaled by a_init_scale), zeros for B
        bound = a_init_scale / math.sqrt(n_in)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_a = nn.Parameter(a)
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
        self.lora_scale = alpha / rank

    def remove_lora(self):
        self.lora_a = None
        self.lora_b = None
        self.lora_scale = 0.0

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora_a is not None:
            y = y + self.lora_scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return y


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama.cpp rope NORM: rotate adjacent pairs. x: (B, H, T, D); cos/sin: (T, D/2)."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack((r0, r1), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_dim
        self.cfg = cfg
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.attn_q = LoRALinear(d, cfg.n_head * hd)
        self.attn_k = LoRALinear(d, cfg.n_head_kv * hd)
        self.attn_v = LoRALinear(d, cfg.n_head_kv * hd)
        self.attn_output = LoRALinear(cfg.n_head * hd, d)
        self.ffn_norm = RMSNorm(d, cfg.norm_eps)
        self.ffn_gate = LoRALinear(d, cfg.n_ff)
        self.ffn_up = LoRALinear(d, cfg.n_ff)
        self.ffn_down = LoRALinear(cfg.n_ff, d)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.attn_q(h).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = self.attn_k(h).view(B, T, cfg.n_head_kv, cfg.head_dim).transpose(1, 2)
        v = self.attn_v(h).view(B, T, cfg.n_head_kv, cfg.head_dim).transpose(1, 2)
        q = rope_norm(q, cos, sin)
        k = rope_norm(k, cos, sin)
        if cfg.n_head_kv != cfg.n_head:
            rep = cfg.n_head // cfg.n_head_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim)
        x = x + self.attn_output(a)
        h = self.ffn_norm(x)
        x = x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))
        return x


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embd = nn.Embedding(cfg.n_vocab, cfg.n_embd)
        nn.init.normal_(self.token_embd.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.output_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = LoRALinear(cfg.n_embd, cfg.n_vocab)
        # scale down residual projections a bit (GPT-2 style)
        for b in self.blocks:
            nn.init.normal_(b.attn_output.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
            nn.init.normal_(b.ffn_down.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
        hd = cfg.head_dim
        inv = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        pos = torch.arange(cfg.n_ctx, dtype=torch.float64)
        ang = pos[:, None] * inv[None, :]
        self.register_buffer("rope_cos", torch.cos(ang).float(), persistent=False)
        self.register_buffer("rope_sin", torch.sin(ang).float(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, n_vocab). Causal attention, positions 0..T-1."""
        B, T = tokens.shape
        x = self.token_embd(tokens)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.output(self.output_norm(x))

    # ---- LoRA helpers -------------------------------------------------------------------
    def lora_modules(self):
        for i, b in enumerate(self.blocks):
            for name in LORA_TARGETS:
                yield i, name, getattr(b, name)

    def add_lora(self, rank: int, alpha: float, seed: int, targets=LORA_TARGETS, a_init_scale: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        for _, name, m in self.lora_modules():
            if name in targets:
                m.add_lora(rank, alpha, g, a_init_scale=a_init_scale)

    def remove_lora(self):
        for _, _, m in self.lora_modules():
            m.remove_lora()

    def lora_state(self):
        """{gguf base tensor name: (A, B)} for all adapted matrices."""
        out = {}
        for i, name, m in self.lora_modules():
            if m.lora_a is not None:
                out[f"blk.{i}.{name}.weight"] = (m.lora_a.detach().clone(), m.lora_b.detach().clone())
        return out

    def load_lora_state(self, state, alpha: float):
        for i, name, m in self.lora_modules():
            key = f"blk.{i}.{name}.weight"
            if key in state:
                a, b = state[key]
                m.lora_a = nn.Parameter(a.clone())
                m.lora_b = nn.Parameter(b.clone())
                m.lora_scale = alpha / a.shape[0]
            else:
                m.remove_lora()

    def base_parameters(self):
        return [p for n, p in self.named_parameters() if "lora_" not in n]

    def lora_parameters(self):
        return [p for n, p in self.named_parameters() if "lora_" in n]
