"""`logo-cpp inspect`: what a GGUF file is (base model or LoRA adapter), read with the gguf package, or what a
PEFT LoRA directory holds."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional


def _value(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def describe_peft(path: str, base: Optional[str] = None) -> dict:
    """A PEFT LoRA directory: its settings, each adapted module's layers, rank, scale and stored type, and
    with `base` whether it fits that model. A directory logo-cpp refuses is described with the reason
    (``supported: False``); missing files raise FileNotFoundError."""
    from . import peft

    directory, config_path, weights = peft.adapter_files(path)
    info: dict = {"directory": str(directory), "kind": "PEFT LoRA adapter",
                  "size_mib": round(weights.stat().st_size / 2**20, 2)}
    try:
        raw = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raw = {}
    if isinstance(raw, dict):
        for key in ("base_model_name_or_path", "peft_type", "r", "lora_alpha", "use_rslora", "target_modules"):
            if key in raw:
                info[key] = raw[key]
        for key in ("rank_pattern", "alpha_pattern"):
            if raw.get(key):
                info[key] = raw[key]
    try:
        adapter = peft.read_adapter(path)
    except ValueError as exc:
        info["supported"] = False
        info["reason"] = str(exc)
        return info
    info["supported"] = True
    modules: dict[str, dict] = {}
    for m in adapter.matrices:
        module = m.weight.split(".")[2]
        entry = modules.setdefault(module, {"layers": 0, "ranks": set(), "scales": set(), "types": set()})
        entry["layers"] += 1
        entry["ranks"].add(m.rank)
        entry["scales"].add(round(m.scale, 6))
        entry["types"].add(m.dtype)
    hf = {gguf: name for name, (_, gguf) in peft.MODULES.items()}
    info["modules"] = {f"{module} ({hf[module]})": f"{e['layers']} layers, rank {'/'.join(map(str, sorted(e['ranks'])))}, "
                       f"scale {'/'.join(f'{s:g}' for s in sorted(e['scales']))}, {'/'.join(sorted(e['types']))}"
                       for module, e in modules.items()}
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
    return info


def describe(path: str, base: Optional[str] = None) -> dict:
    from gguf import GGUFReader

    from . import peft

    path = os.fspath(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: '{path}'")
    if peft.is_peft_path(path):
        return describe_peft(path, base)
    if Path(path).is_dir():
        raise IsADirectoryError(f"'{path}' is a directory, expected a GGUF file or a PEFT adapter directory")
    # The runtime's own header check first: the gguf package meets a truncated file or an unknown version
    # with numpy's reshape/view messages; this names the file and the version, or the truncated tensor with
    # the bytes it needs and the bytes present (the messages Model and AdapterPool give).
    from . import _core

    _core.check_gguf_file(path)
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf package raises assorted types for what ggml reads and it does not
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
