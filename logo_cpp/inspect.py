"""`logo-cpp inspect`: what a GGUF file is (base model or LoRA adapter), read with the gguf package."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional


def _value(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def describe(path: str, base: Optional[str] = None) -> dict:
    from gguf import GGUFReader

    path = os.fspath(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: '{path}'")
    if Path(path).is_dir():
        raise IsADirectoryError(f"'{path}' is a directory, expected a GGUF file")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf package raises assorted types for foreign files
        raise ValueError(f"'{path}' is not a readable GGUF file ({exc})") from None
    arch = _value(reader, "general.architecture", "?")
    kind = _value(reader, "general.type", "model")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    info: dict = {"file": path, "size_mib": round(Path(path).stat().st_size / 2**20, 2), "kind": kind,
                  "architecture": arch, "tensors": len(reader.tensors), "types": dict(types)}
    if kind == "adapter":
        alpha = float(_value(reader, "adapter.lora.alpha", 0.0))
        info["alpha"] = alpha
        modules: dict[str, dict] = {}
        for t in reader.tensors:
            if not t.name.endswith(".lora_b"):
                continue
            parts = t.name.split(".")
            module = parts[2] if parts[0] == "blk" else parts[0]
            rank = int(t.shape[0])
            entry = modules.setdefault(module, {"layers": 0, "ranks": set(), "types": set()})
            entry["layers"] += 1
            entry["ranks"].add(rank)
            entry["types"].add(t.tensor_type.name)
        info["modules"] = {m: f"{e['layers']} layers, rank {'/'.join(map(str, sorted(e['ranks'])))}, "
                              f"{'/'.join(sorted(e['types']))}" + (f", scale {alpha / min(e['ranks']):g}" if alpha else ", scale 1 (no alpha)")
                           for m, e in modules.items()}
        if base is not None:
            import logo_cpp

            model = logo_cpp.Model(base, n_ctx=16)
            try:
                logo_cpp.AdapterPool(model, [path])
                info["fits"] = True
                info["fit"] = f"fits '{base}'"
            except logo_cpp.FormatError as exc:
                info["fits"] = False
                info["fit"] = str(exc)
    else:
        a = f"{arch}."
        keys = ["context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.key_length", "rope.freq_base", "attention.layer_norm_rms_epsilon"]
        info["hyperparameters"] = {k: _value(reader, a + k) for k in keys if _value(reader, a + k) is not None}
        n_params = sum(int(t.n_elements) for t in reader.tensors)
        info["parameters"] = f"{n_params / 1e6:.1f}M"
        info["vocabulary"] = len(_value(reader, "tokenizer.ggml.tokens", []) or [])
        info["tied_output"] = not any(t.name == "output.weight" for t in reader.tensors)
        info["chat_template"] = _value(reader, "tokenizer.chat_template") is not None
        if base is not None:
            raise ValueError("--base applies to adapters; this file is a base model")
    return info
