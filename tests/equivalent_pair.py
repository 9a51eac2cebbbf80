"""The low-rank pair logo-cpp builds for a mixture over a quantized base, written as one GGUF LoRA that
llama.cpp can run: llama.cpp must then reproduce our logits bit for bit (tests of mixtures on quantized bases).

The layout rule restated here independently of cpp/src/mixture.cpp (pair_layout): a pair of at most 0.4% of
the base's per-step weight elements keeps the adapters' own types unpadded ("own"); any larger pair is Q8_0 with
ranks padded to 32 ("q8_0")."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

LINEAR_MAPS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def read_pairs(path) -> dict:
    """{weight name: (A (r, n_in), B (n_out, r), scale, A's type, B's type)} of a GGUF LoRA, values as float32
    exactly as stored; scale = alpha / r, or 1 when the file has no alpha (llama.cpp's rule)."""
    reader = GGUFReader(str(path))
    field = reader.fields.get("adapter.lora.alpha")
    alpha = np.float32(field.contents()) if field is not None else np.float32(0)
    tensors = {t.name: (dequantize(t.data, t.tensor_type).astype(np.float32), t.tensor_type) for t in reader.tensors}
    pairs = {}
    for name, (a, type_a) in tensors.items():
        if name.endswith(".lora_a"):
            weight = name[: -len(".lora_a")]
            b, type_b = tensors[weight + ".lora_b"]
            scale = alpha / np.float32(a.shape[0]) if alpha != 0 else np.float32(1)
            pairs[weight] = (a, b, scale, type_a, type_b)
    return pairs


def step_elements(base_path) -> int:
    """Weight elements of one decode step of a base model: every block's linear maps and the output head."""
    reader = GGUFReader(str(base_path))
    sizes = {t.name: int(t.n_elements) for t in reader.tensors}
    head = sizes.get("output.weight", sizes["token_embd.weight"])
    return head + sum(n for name, n in sizes.items() if name.startswith("blk.") and name.split(".")[2] in LINEAR_MAPS)


def layout_for(base_path, mixture: dict) -> str:
    """'own' or 'q8_0': the layout logo-cpp uses for ``mixture`` ({adapter file: weight}) over that base."""
    ranks: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for file in mixture:
        for name, (a, b, *_) in read_pairs(file).items():
            ranks[name] = ranks.get(name, 0) + a.shape[0]
            shapes[name] = a.shape[1] + b.shape[0]
    elements = sum(ranks[n] * shapes[n] for n in ranks)
    return "own" if elements * 250 <= step_elements(base_path) else "q8_0"


def _encode(m: np.ndarray, kind: GGMLQuantizationType):
    if kind == GGMLQuantizationType.F32:
        return m, None
    if kind == GGMLQuantizationType.F16:
        return m.astype(np.float16), None
    return quantize(m, kind), kind


def write_equivalent_pair(path, mixture: dict, layout: str = "q8_0", arch: str = "llama"):
    """One adapter file holding the pair cpp/src/mixture.cpp builds for ``mixture`` ({adapter file: weight}),
    with no alpha key (llama.cpp then applies it at scale 1). Per adapted weight: A = [c_1 A_1; c_2 A_2; ...]
    with c_i = w_i * (alpha_i / r_i) in float32 as mixture.cpp computes it, B = [B_1 | B_2 | ...] as stored.
    layout "q8_0": both Q8_0, the rank padded to a multiple of 32 with zero rows of A and zero columns of B
    (gguf-py's Q8_0 rounds as ggml's reference quantizer, which mixture.cpp reproduces). Layout "own": A in the
    adapters' A type and B in their B type where they agree (else F32; a Q8_0 B whose rank does not fill
    blocks of 32 as F16), unpadded. Returns ``path``."""
    parts: dict[str, list] = {}
    for file, weight in mixture.items():
        for name, (a, b, scale, type_a, type_b) in read_pairs(file).items():
            parts.setdefault(name, []).append(((np.float32(weight) * scale) * a, b, type_a, type_b))
    writer = GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    for name, pairs in parts.items():
        a = np.concatenate([p[0] for p in pairs], axis=0)   # (R, n_in)
        b = np.concatenate([p[1] for p in pairs], axis=1)   # (n_out, R)
        if layout == "q8_0":
            pad = -a.shape[0] % 32
            a = np.concatenate([a, np.zeros((pad, a.shape[1]), np.float32)], axis=0)
            b = np.concatenate([b, np.zeros((b.shape[0], pad), np.float32)], axis=1)
            kind_a = kind_b = GGMLQuantizationType.Q8_0
        else:
            types_a, types_b = {p[2] for p in pairs}, {p[3] for p in pairs}
            kind_a = types_a.pop() if len(types_a) == 1 else GGMLQuantizationType.F32
            kind_b = types_b.pop() if len(types_b) == 1 else GGMLQuantizationType.F32
            if kind_b == GGMLQuantizationType.Q8_0 and b.shape[1] % 32:
                kind_b = GGMLQuantizationType.F16
        for suffix, m, kind in ((".lora_a", a, kind_a), (".lora_b", b, kind_b)):
            data, raw = _encode(np.ascontiguousarray(m), kind)
            writer.add_tensor(name + suffix, data, raw_dtype=raw) if raw is not None else writer.add_tensor(name + suffix, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
