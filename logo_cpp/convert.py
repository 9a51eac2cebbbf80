"""`logo-cpp convert`: a PEFT LoRA directory -> a GGUF LoRA in llama.cpp's format, for a given base GGUF.

The tensors are the ones the pool loads from the directory (logo_cpp.peft: module names, llama's Q/K row
order), checked against the base by loading them into a pool first, then written with gguf-py as llama.cpp's
convert_lora_to_gguf.py writes them: `blk.N.<module>.weight.lora_a` (lora_A, ggml ne [n_in, r]) and
`.lora_b` (lora_B, ne [r, n_out]), general.type "adapter", adapter.type "lora", adapter.lora.alpha.

llama.cpp scales every matrix by alpha / r with one alpha per file. PEFT's scale is alpha_m / r_m per
module (alpha_pattern), or alpha / sqrt(r_m) with use_rslora, which one alpha cannot always express: the
file's alpha is the one that expresses the most matrices as they are, and each other matrix's lora_B is
multiplied by scale_m / (alpha / r_m), so llama.cpp computes exactly PEFT's delta.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import peft

PathLike = Union[str, os.PathLike]
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# Scales closer than this (relative) are the same scale: float32 rounding of alpha / r, not a difference.
_SAME_SCALE = 1e-6


@dataclass
class Converted:
    path: Path
    arch: str
    alpha: float        # adapter.lora.alpha written
    matrices: int
    folded: list[str]   # weights whose lora_B carries a factor for their own scale


def file_alpha(adapter: peft.PeftAdapter) -> float:
    """The one alpha for the file: alpha_m' = scale_m * r_m is what each matrix needs; the most common
    wins (ties: the first in block order). Zero is never chosen: llama.cpp reads alpha 0 as "no scaling"."""
    needed = [m.scale * m.rank for m in adapter.matrices]
    counts: Counter = Counter()
    first: dict[float, float] = {}
    for value in needed:
        if value == 0:
            continue
        key = float(np.float32(value))
        counts[key] += 1
        first.setdefault(key, value)
    if not counts:
        return 1.0
    best = max(counts.values())
    return next(first[k] for k in first if counts[k] == best)


def _encode(array: np.ndarray, outtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: llama.cpp's converter keeps a q8_0 matrix whose rows do not
    fill whole 32-value blocks (a low-rank lora_b) in F16."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if outtype == "q8_0" and array.shape[-1] % 32 != 0:
        outtype = "f16"
    if outtype == "f32":
        return array, None
    if outtype == "f16":
        return array.astype(np.float16), None
    kind = GGMLQuantizationType.BF16 if outtype == "bf16" else GGMLQuantizationType.Q8_0
    return quantize(array, kind), kind


def _check_output(out: Path, peft_path: PathLike, base: PathLike, force: bool) -> None:
    """Refuses, before any work, an output that cannot be written, that would overwrite an input, or that exists
    (unless `force`)."""
    if out.is_dir():
        raise IsADirectoryError(f"output '{out}' is a directory; give a file name such as '{out / 'adapter.gguf'}'")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder '{parent}' is not writable")
    source = Path(peft_path)
    inputs = [Path(base)] + ([source / peft.CONFIG_FILE, source / peft.WEIGHTS_FILE] if source.is_dir()
                             else [source, source.parent / peft.CONFIG_FILE])
    target = out.resolve()
    for path in inputs:
        if path.exists() and path.resolve() == target:
            raise ValueError(f"output '{out}' is the input file '{path}'; write the GGUF elsewhere")
    if out.exists() and not force:
        raise FileExistsError(f"output '{out}' already exists; give --force (force=True) to replace it, or another "
                              f"--out")


def convert(peft_path: PathLike, out: PathLike, base: PathLike, outtype: str = "f32",
            name: Optional[str] = None, task_name: Optional[str] = None, force: bool = False) -> Converted:
    """Writes the PEFT adapter at `peft_path` (directory or safetensors file) as a GGUF LoRA for the base
    model file `base`, tensors in `outtype` (f32 as llama.cpp's converter does by default, f16, bf16, q8_0).
    `name` is general.name (default: the directory's name); `task_name` goes to adapter.lora.task_name. An
    existing `out` is replaced only with `force` (then atomically, once the new file has loaded back).

    The adapter is loaded into a pool over `base` first (every refusal and shape check of AdapterPool.add),
    and the written file is loaded back before returning. Raises FileNotFoundError, logo_cpp.FormatError,
    ValueError (an unknown outtype), FileExistsError (`out` exists, without `force`); warns
    (peft.AdapterWarning) as peft.read_adapter does."""
    from gguf import GGML_QUANT_VERSION, GGUFWriter

    import logo_cpp

    if outtype not in OUTTYPES:
        raise ValueError(f"unknown output type {outtype!r}: one of {', '.join(OUTTYPES)}")
    out = Path(out)
    _check_output(out, peft_path, base, force)
    model = logo_cpp.Model(base, n_ctx=8, n_threads=1)
    adapter = peft.load_for_model(peft_path, model._core, name)
    pool = logo_cpp.AdapterPool(model)
    pool._core.add_tensors([peft.as_core_adapter(adapter)])  # every check against the base, nothing written yet

    alpha = file_alpha(adapter)
    tmp = out.with_name(out.name + ".tmp")
    writer = GGUFWriter(str(tmp), model.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("general.name", adapter.name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    if task_name:
        writer.add_string("adapter.lora.task_name", task_name)
    folded = []
    for m in adapter.matrices:
        b = m.b
        as_written = float(np.float32(alpha)) / m.rank
        if abs(as_written - m.scale) > _SAME_SCALE * max(abs(m.scale), 1e-30):
            b = m.b * np.float32(m.scale / as_written)
            folded.append(m.weight)
        for suffix, array in ((".lora_a", m.a), (".lora_b", b)):
            data, raw = _encode(array, outtype)
            if raw is None:
                writer.add_tensor(m.weight + suffix, data)
            else:
                writer.add_tensor(m.weight + suffix, data, raw_dtype=raw)
    try:
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interrupt leaves no half-written file behind
        raise
    try:
        pool._core.add([str(tmp)], ["written"])  # the file we wrote must load as any GGUF adapter does
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return Converted(out, model.arch, float(alpha), len(adapter.matrices), folded)
