"""Export the PyTorch base model and LoRA adapters to GGUF files that libllama loads.

Base model: general.architecture = "llama", tokenizer "llama" (SPM) from tokenizer.py,
weights F32 / F16 / Q8_0 (norm vectors always F32).  Because model.py applies RoPE the way
llama.cpp's rope type NORM does (adjacent pairs), weights are written as-is, no Q/K permutation.

Adapters: llama.cpp's LoRA format: general.type = "adapter", adapter.type = "lora",
adapter.lora.alpha (f32), tensors "<base tensor name>.lora_a" (numpy (r, n_in)) and
".lora_b" (numpy (n_out, r)); llama.cpp applies  W x + (scale * alpha / r) * B (A x).
"""
from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

from . import tokenizer as tok
from .model import LlamaModel

# llama_ftype values (general.file_type)
_FTYPE = {"f32": 0, "f16": 1, "q8_0": 7}
_QTYPE = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0}


def base_tensors(model: LlamaModel):
    """(gguf name, numpy float32 array) in llama.cpp naming."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items() if "lora_" not in k}
    yield "token_embd.weight", sd["token_embd.weight"]
    for i in range(model.cfg.n_layer):
        p = f"blocks.{i}."
        for name in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
            yield f"blk.{i}.{name}.weight", sd[p + name + ".weight"]
    yield "output_norm.weight", sd["output_norm.weight"]
    yield "output.weight", sd["output.weight"]


def write_base_gguf(model: LlamaModel, path: str, wtype: str = "f16", name: str = "logo-tiny-llama",
                    extra_kv: dict | None = None) -> None:
    cfg = model.cfg
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(name)
    w.add_type("model")
    w.add_file_type(_FTYPE[wtype])
    w.add_context_length(cfg.n_ctx)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.n_vocab)
    tok.gguf_tokenizer_metadata(w)
    for k, v in (extra_kv or {}).items():
        w.add_string(k, str(v))
    for tname, arr in base_tensors(model):
        if arr.ndim == 1 or wtype == "f32":
            w.add_tensor(tname, arr.astype(np.float32))
        elif wtype == "f16":
            w.add_tensor(tname, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr.astype(np.float32), _QTYPE[wtype])
            w.add_tensor(tname, q, raw_dtype=_QTYPE[wtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_vocab_gguf(path: str, n_embd: int = 32) -> None:
    """A minimal llama GGUF (tiny random weights) used only to check tokenization with libllama."""
    import torch
    from .model import ModelConfig
    torch.manual_seed(0)
    m = LlamaModel(ModelConfig(n_vocab=tok.N_VOCAB, n_embd=n_embd, n_layer=1, n_head=1, n_head_kv=1, n_ff=32))
    write_base_gguf(m, path, "f32", name="vocab-only")


def write_lora_gguf(lora_state: dict, alpha: float, path: str, task: str = "", prompt_format: str = "",
                    dtype: str = "f32") -> None:
    """lora_state: {"blk.N.attn_q.weight": (A (r, n_in), B (n_out, r)), ...} (torch or numpy)."""
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if task:
        w.add_name(f"lora-{task}")
        w.add_string(gguf.Keys.Adapter.LORA_TASK_NAME, task)
        w.add_string("logo.task", task)
    if prompt_format:
        w.add_string("logo.prompt_format", prompt_format)
    npdt = np.float16 if dtype == "f16" else np.float32
    for name in sorted(lora_state, key=_tensor_order):
        a, b = lora_state[name]
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float32)
        b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float32)
        assert a.shape[0] == b.shape[1], (name, a.shape, b.shape)
        w.add_tensor(name + ".lora_a", a.astype(npdt))
        w.add_tensor(name + ".lora_b", b.astype(npdt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensor_order(name: str):
    parts = name.split(".")
    return (int(parts[1]) if parts[0] == "blk" else -1, name)
