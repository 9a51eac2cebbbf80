"""A PEFT LoRA (trained on ``hf_base``'s model) as a GGUF LoRA in llama.cpp's adapter format.

What llama.cpp's ``convert_lora_to_gguf.py`` writes for a llama base, written here without needing the
base model's Hugging Face directory: keys ``general.type = "adapter"``, ``general.architecture = "llama"``,
``adapter.type = "lora"``, ``adapter.lora.alpha``; per adapted matrix ``<gguf name>.lora_a`` (PEFT's lora_A,
(r, n_in), ggml ne [n_in, r]) and ``<gguf name>.lora_b`` (PEFT's lora_B, (n_out, r), ne [r, n_out]), with the
rows of attn_q / attn_k B matrices permuted as the converter permutes the base's Q/K weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .hf_base import HF_TO_GGUF_MODULE, permute_rows

_PEFT_NAME = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

DTYPES = ("F16", "F32")


def peft_to_gguf_tensors(state: dict, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """PEFT tensor dict (name -> (rows, cols) float array) -> GGUF tensor dict (name -> numpy array whose
    shape is ggml's ne reversed). Raises ValueError naming a tensor the llama mapping does not know."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        m = _PEFT_NAME.match(name)
        if m is None or m.group(2) not in HF_TO_GGUF_MODULE:
            raise ValueError(f"PEFT tensor {name!r}: not a LoRA A/B of a llama attention or MLP projection")
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        w = np.asarray(value, dtype=np.float32)
        if which == "B" and module == "q_proj":
            w = permute_rows(w, n_head)
        elif which == "B" and module == "k_proj":
            w = permute_rows(w, n_head_kv)
        out[f"blk.{layer}.{HF_TO_GGUF_MODULE[module]}.weight.lora_{which.lower()}"] = w
    return out


def write_gguf_lora(path: str | Path, tensors: dict[str, np.ndarray], alpha: float, dtype: str = "F16",
                    task_name: str | None = None) -> None:
    """Writes a GGUF LoRA for a llama base. ``dtype``: "F16" (the shipped type) or "F32"."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    np_type = np.float16 if dtype == "F16" else np.float32
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    if task_name:
        writer.add_string("adapter.lora.task_name", task_name)
    for name in sorted(tensors, key=_tensor_order):
        writer.add_tensor(name, np.ascontiguousarray(tensors[name].astype(np_type)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _tensor_order(name: str):
    parts = name.split(".")
    return (int(parts[1]) if parts[0] == "blk" else -1, name)


def peft_dir_to_gguf(peft_dir: str | Path, out: str | Path, n_head: int, n_head_kv: int, dtype: str = "F16",
                     task_name: str | None = None) -> None:
    """Converts a PEFT directory saved by ``train.py`` (one global ``lora_alpha``, no patterns)."""
    from safetensors.numpy import load_file

    peft_dir = Path(peft_dir)
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    for key in ("alpha_pattern", "rank_pattern"):
        if config.get(key):
            raise ValueError(f"{peft_dir}: {key} is set; this exporter writes one global alpha")
    if config.get("use_rslora") or config.get("use_dora"):
        raise ValueError(f"{peft_dir}: use_rslora/use_dora are not written by this exporter")
    state = load_file(str(peft_dir / "adapter_model.safetensors"))
    write_gguf_lora(out, peft_to_gguf_tensors(state, n_head, n_head_kv), config["lora_alpha"], dtype, task_name)
