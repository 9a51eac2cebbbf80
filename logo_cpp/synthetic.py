"""Random-weight Llama-family models and LoRA adapters in GGUF, for tests and benchmarks.

The models carry a small SentencePiece-style vocabulary of their own that libllama loads, a ChatML
template, and weights scaled so activations stay of order one through the layers. Quantized variants
come from llama.cpp's own quantizer. Broken files for error tests are made here too, from the same code.

    python -m logo_cpp.synthetic OUTDIR        # a small standard set
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import quantize as gguf_quantize

PathLike = Union[str, os.PathLike]

# -- tokenizer --------------------------------------------------------------------------------------

WORDS = (
    "the of and to in is was for on that with as by at from his her he she it they we you this be are "
    "not or have had but one all an were which their there been has will more would who no so if out "
    "about up what when can said into some could time them other than then now only its two may first "
    "new people like over such also after way many these most know just good any very make well world "
    "hello cat dog sat mat quick brown fox jumps lazy numbers symbols mixed words translate french cheese "
    "answer question number word reverse sort upper lower count add sum list city capital country date "
    "year month day code sql math poem legal chat user assistant system ing ed er ly tion s"
).split()
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_BYTE = 1, 2, 3, 6


def make_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types: specials, 256 byte tokens, single characters, then every prefix of
    each word piece (so SentencePiece's pair merges can reach the whole piece), longer pieces scoring
    higher."""
    tokens = list(SPECIAL)
    types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL, TYPE_CONTROL, TYPE_CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TYPE_BYTE] * 256
    pieces: list[str] = []
    for c in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()":
        pieces.append(c)
    for word in WORDS:
        for variant in ("▁" + word, word, "▁" + word.capitalize()):
            for end in range(2, len(variant) + 1):
                piece = variant[:end]
                if piece not in pieces:
                    pieces.append(piece)
    tokens += pieces
    types += [TYPE_NORMAL] * len(pieces)
    scores = [0.0] * (len(SPECIAL) + 256) + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    return tokens, scores, types


# -- models -----------------------------------------------------------------------------------------

ARCHS = ("llama", "qwen2", "qwen3")


@dataclass
class ModelSpec:
    """Shape of a synthetic model. The vocabulary is always make_vocab()'s (plus extra_vocab padding
    tokens), so n_vocab() is derived; hd is the head size (head_dim, default n_embd // n_head)."""

    arch: str = "llama"  # llama | qwen2 | qwen3
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 256
    head_dim: Optional[int] = None  # default n_embd // n_head; qwen3 may differ
    n_ctx_train: int = 4096
    rope_theta: float = 10000.0
    rms_eps: Optional[float] = None  # default 1e-5 for llama, 1e-6 for qwen
    tied_output: bool = False
    rope_freq_factors: bool = False  # llama 3 style rope_freqs.weight
    seed: int = 0
    extra_vocab: int = 0  # pad the vocabulary with unused tokens (bigger embeddings for benchmarks)
    vocab: tuple = field(default_factory=tuple, repr=False)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported arch {self.arch!r}: one of {', '.join(ARCHS)}")
        if self.n_head % self.n_head_kv != 0:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv})")
        if self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) is not a multiple of n_head ({self.n_head}); set head_dim")
        if self.hd % 2 != 0:
            raise ValueError(f"head size {self.hd} must be even (rotary pairs)")

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def eps(self) -> float:
        return self.rms_eps if self.rms_eps is not None else (1e-5 if self.arch == "llama" else 1e-6)

    def vocabulary(self):
        tokens, scores, types = make_vocab()
        for i in range(self.extra_vocab):
            tokens.append(f"<extra_{i}>")
            scores.append(-1000.0)
            types.append(TYPE_NORMAL)
        return tokens, scores, types

    def n_vocab(self) -> int:
        return len(self.vocabulary()[0])

    def matrix_shapes(self) -> dict[str, tuple[int, int]]:
        """(n_in, n_out) of each adaptable linear map of a block."""
        q, kv = self.hd * self.n_head, self.hd * self.n_head_kv
        return {"attn_q": (self.n_embd, q), "attn_k": (self.n_embd, kv), "attn_v": (self.n_embd, kv),
                "attn_output": (q, self.n_embd), "ffn_gate": (self.n_embd, self.n_ff),
                "ffn_up": (self.n_embd, self.n_ff), "ffn_down": (self.n_ff, self.n_embd)}

    def parameter_count(self) -> int:
        per_layer = sum(a * b for a, b in self.matrix_shapes().values())
        head = 0 if self.tied_output else self.n_vocab() * self.n_embd
        return self.n_layer * per_layer + self.n_vocab() * self.n_embd + head


def _encode(array: np.ndarray, dtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor; 1-D tensors always stay F32."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "f32" or array.ndim == 1:
        return array, None
    if dtype == "f16":
        return array.astype(np.float16), None
    kinds = {"bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0}
    if dtype not in kinds:
        raise ValueError(f"unsupported dtype {dtype!r}: f32, f16, bf16 or q8_0 (others via quantize())")
    return gguf_quantize(array, kinds[dtype]), kinds[dtype]


def _add(writer: GGUFWriter, name: str, array: np.ndarray, dtype: str = "f32") -> None:
    data, raw = _encode(array, dtype)
    writer.add_tensor(name, data, raw_dtype=raw) if raw is not None else writer.add_tensor(name, data)


def _write_header(writer: GGUFWriter, spec: ModelSpec, arch: Optional[str] = None) -> None:
    arch = arch or spec.arch
    tokens, scores, types = spec.vocabulary()
    writer.add_name(f"logo-cpp synthetic {spec.arch}")
    writer.add_uint32(f"{arch}.context_length", spec.n_ctx_train)
    writer.add_uint32(f"{arch}.embedding_length", spec.n_embd)
    writer.add_uint32(f"{arch}.block_count", spec.n_layer)
    writer.add_uint32(f"{arch}.feed_forward_length", spec.n_ff)
    writer.add_uint32(f"{arch}.attention.head_count", spec.n_head)
    writer.add_uint32(f"{arch}.attention.head_count_kv", spec.n_head_kv)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", spec.eps)
    writer.add_float32(f"{arch}.rope.freq_base", spec.rope_theta)
    writer.add_uint32(f"{arch}.rope.dimension_count", spec.hd)  # llama.cpp's default too (full rotary)
    if spec.head_dim:
        writer.add_uint32(f"{arch}.attention.key_length", spec.hd)
        writer.add_uint32(f"{arch}.attention.value_length", spec.hd)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML)


def model_tensors(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Every tensor of the model, float32 numpy in (n_out, n_in) order."""
    rng = np.random.default_rng(spec.seed)
    n_vocab = spec.n_vocab()
    out: dict[str, np.ndarray] = {}

    def mat(n_out, n_in, gain=1.0):
        return (rng.standard_normal((n_out, n_in)) * gain / np.sqrt(n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    if spec.tied_output:
        # The embedding is also the read-out. Kept small against the residual branches (else every token's
        # own embedding dominates its logits and greedy decoding repeats the prompt's last token forever),
        # with output_norm scaled up instead so the logits still have a spread of about 2.
        out["token_embd.weight"] = (rng.standard_normal((n_vocab, spec.n_embd)) * 0.25 / np.sqrt(spec.n_embd)).astype(np.float32)
        out["output_norm.weight"] = 8.0 * norm(spec.n_embd)
    else:
        out["token_embd.weight"] = rng.standard_normal((n_vocab, spec.n_embd)).astype(np.float32)
        out["output_norm.weight"] = norm(spec.n_embd)
    if not spec.tied_output:
        out["output.weight"] = mat(n_vocab, spec.n_embd, gain=2.0)
    if spec.rope_freq_factors:
        out["rope_freqs.weight"] = np.linspace(1.0, 8.0, spec.hd // 2).astype(np.float32)
    shapes = spec.matrix_shapes()
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        out[p + "attn_norm.weight"] = norm(spec.n_embd)
        out[p + "ffn_norm.weight"] = norm(spec.n_embd)
        for module, (n_in, n_out) in shapes.items():
            # Residual-branch outputs are damped so the stream does not grow with depth.
            gain = 0.5 if module in ("attn_output", "ffn_down") else 1.0
            out[p + module + ".weight"] = mat(n_out, n_in, gain)
        if spec.arch == "qwen2":
            for module in ("attn_q", "attn_k", "attn_v"):
                out[p + module + ".bias"] = (0.1 * rng.standard_normal(shapes[module][1])).astype(np.float32)
        if spec.arch == "qwen3":
            out[p + "attn_q_norm.weight"] = norm(spec.hd)
            out[p + "attn_k_norm.weight"] = norm(spec.hd)
    return out


FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k": 15, "q5_k": 17,
          "q6_k": 18, "bf16": 32}


Metadata = dict  # key -> value, (GGUFValueType, value), or None to leave the key out


def _apply_metadata(writer: GGUFWriter, metadata: Optional[Metadata]) -> None:
    """Overrides, adds or removes keys: a float is written F32, a bool BOOL, an int UINT32 (INT32 when
    negative), a str STRING; (GGUFValueType, value) picks the type; None removes the key."""
    for key, value in (metadata or {}).items():
        if value is None:
            writer.kv_data[0].pop(key, None)
            continue
        if isinstance(value, tuple):
            vtype, value = value
        elif isinstance(value, bool):
            vtype = GGUFValueType.BOOL
        elif isinstance(value, int):
            vtype = GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32
        elif isinstance(value, float):
            vtype = GGUFValueType.FLOAT32
        elif isinstance(value, str):
            vtype = GGUFValueType.STRING
        else:
            raise TypeError(f"metadata {key!r}: give a float, int, bool, str or (GGUFValueType, value)")
        writer.kv_data[0].pop(key, None)  # replace without gguf's duplicate-key warning
        writer.add_key_value(key, value, vtype)


def write_model(path: PathLike, spec: ModelSpec, dtype: str = "f32", metadata: Optional[Metadata] = None) -> Path:
    """Writes a random-weight model llama.cpp loads: every tensor of its architecture (model_tensors), the
    hyperparameters, and the tokenizer (make_vocab, BOS 1, EOS 2, ChatML template).

    dtype f32/f16/bf16 is written here (1-D tensors stay F32; with bf16 token_embd stays F32 too); any
    other FTYPES key (q8_0, q4_0, q4_k, ...) goes through an F32 temporary and llama.cpp's quantizer.
    ``metadata`` overrides header keys (see _apply_metadata), e.g. {"llama.rope.freq_base": float("nan")}
    for a file that must be refused."""
    path = Path(path)
    if dtype not in ("f32", "f16", "bf16"):
        tmp = path.with_suffix(".f32.tmp.gguf")
        write_model(tmp, spec, "f32", metadata)
        try:
            quantize(tmp, path, dtype)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    writer = GGUFWriter(str(path), spec.arch)
    _write_header(writer, spec)
    _apply_metadata(writer, metadata)
    for name, array in model_tensors(spec).items():
        keep_f32 = array.ndim == 1 or name == "token_embd.weight" and dtype == "bf16"
        _add(writer, name, array, "f32" if keep_f32 else dtype)
    _finish(writer)
    return path


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: PathLike, dst: PathLike, ftype: str, allow_requantize: bool = False) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize) with its default parameters, ftype one of FTYPES
    (q4_k = Q4_K_M, q5_k = Q5_K_M: these mix in Q6_K for some tensors). K-quants need rows that are a
    multiple of 256: llama.cpp quantizes a tensor whose rows are not to a fallback type (Q5_0, Q5_1 or
    Q8_0) rather than failing, so use n_embd and n_ff multiples of 256 to get real K-quant matrices.
    ``allow_requantize``: also quantize tensors that are already quantized (llama-quantize
    --allow-requantize; the result carries both roundings). Logs a line per tensor through llama.cpp's
    logger. Raises RuntimeError on a non-zero return."""
    import llama_cpp

    if ftype not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; one of {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = 2
    params.allow_requantize = allow_requantize
    rc = llama_cpp.llama_model_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) failed with {rc}")
    return Path(dst)


# -- adapters ---------------------------------------------------------------------------------------

def spec_from_gguf(path: PathLike) -> ModelSpec:
    """The ModelSpec of an existing base model file (shapes only: arch, sizes, head size, tying), enough to
    make adapters for it. Works for any llama/qwen2/qwen3 GGUF, not only synthetic ones; the vocabulary
    and the weights are not read."""
    from gguf import GGUFReader

    reader = GGUFReader(os.fspath(path))

    def value(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v[0] if isinstance(v, list) and v else v

    arch = value("general.architecture")
    if value("general.type") == "adapter":
        raise ValueError(f"{path} is an adapter, not a base model")
    n_embd, n_head = int(value(f"{arch}.embedding_length")), int(value(f"{arch}.attention.head_count"))
    key_length = value(f"{arch}.attention.key_length")
    names = {t.name for t in reader.tensors}
    return ModelSpec(arch=arch, n_embd=n_embd, n_layer=int(value(f"{arch}.block_count")), n_head=n_head,
                     n_head_kv=int(value(f"{arch}.attention.head_count_kv", n_head)),
                     n_ff=int(value(f"{arch}.feed_forward_length")),
                     head_dim=int(key_length) if key_length is not None and int(key_length) != n_embd // n_head else None,
                     n_ctx_train=int(value(f"{arch}.context_length", 4096)),
                     tied_output="output.weight" not in names, rope_freq_factors="rope_freqs.weight" in names)


def _as_spec(spec_or_base_path: Union[ModelSpec, PathLike]) -> ModelSpec:
    return spec_or_base_path if isinstance(spec_or_base_path, ModelSpec) else spec_from_gguf(spec_or_base_path)


def adapter_tensors(spec: Union[ModelSpec, PathLike], targets: Sequence[str] = ("attn_q", "attn_v"), rank: int = 8,
                    seed: int = 0, layers: Optional[Sequence[int]] = None,
                    ranks: Optional[dict[str, int]] = None) -> dict[str, np.ndarray]:
    """LoRA A (r, n_in) and B (n_out, r) per adapted weight, float32 numpy, named
    ``blk.{i}.{target}.weight.lora_a`` / ``.lora_b``. B is non-zero (unlike a fresh PEFT init) so each
    adapter visibly moves the output: A ~ N(0, 1/n_in), B ~ N(0, 0.25/r), so that B @ A x has about
    half the size of x per unit of scale. ``spec`` may be a base model file."""
    spec = _as_spec(spec)
    rng = np.random.default_rng(seed)
    shapes = spec.matrix_shapes()
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}: one of {', '.join(shapes)}")
    out = {}
    for il in (range(spec.n_layer) if layers is None else layers):
        for module in targets:
            n_in, n_out = shapes[module]
            r = (ranks or {}).get(module, rank)
            weight = f"blk.{il}.{module}.weight"
            out[weight + ".lora_a"] = (rng.standard_normal((r, n_in)) / np.sqrt(n_in)).astype(np.float32)
            out[weight + ".lora_b"] = (rng.standard_normal((n_out, r)) * 0.5 / np.sqrt(r)).astype(np.float32)
    return out


def write_adapter(path: PathLike, spec_or_base_path: Union[ModelSpec, PathLike],
                  targets: Sequence[str] = ("attn_q", "attn_v"), rank: int = 8, alpha: float = 16.0,
                  dtype: str = "f32", seed: int = 0, layers: Optional[Sequence[int]] = None,
                  arch: Optional[str] = None, ranks: Optional[dict[str, int]] = None,
                  tensors: Optional[dict[str, np.ndarray]] = None, metadata: Optional[Metadata] = None) -> Path:
    """A LoRA adapter in llama.cpp's GGUF format (as its convert_lora_to_gguf.py writes them).

    Keys: general.architecture (``arch`` or the model's), general.type="adapter", adapter.type="lora",
    adapter.lora.alpha (f32; llama.cpp scales by alpha / rank, or 1 when alpha is 0). Tensors
    ``blk.{i}.{target}.weight.lora_a`` (numpy (r, n_in), ggml ne [n_in, r]) and ``.lora_b`` (numpy
    (n_out, r), ggml ne [r, n_out]) for each layer in ``layers`` (default all) and target in ``targets``
    (attn_q/k/v, attn_output, ffn_gate/up/down), rank ``ranks.get(target, rank)``. dtype: f32, f16,
    bf16 or q8_0 (a matrix whose rows are not a multiple of 32, typically B, is written F16 then).
    ``spec_or_base_path``: a ModelSpec or the path of a base model GGUF (see spec_from_gguf).
    ``tensors`` overrides the generated ones and ``metadata`` the keys (for broken files)."""
    path = Path(path)
    spec = _as_spec(spec_or_base_path)
    writer = GGUFWriter(str(path), arch or spec.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    _apply_metadata(writer, metadata)
    if tensors is None:
        tensors = adapter_tensors(spec, targets, rank, seed, layers, ranks)
    for name, array in tensors.items():
        kind = dtype
        # As llama.cpp's converter: a q8_0 matrix whose rows do not fill whole blocks stays F16.
        if dtype == "q8_0" and array.shape[-1] % 32 != 0:
            kind = "f16"
        _add(writer, name, array, kind)
    _finish(writer)
    return path


# -- broken files -----------------------------------------------------------------------------------

BROKEN_KINDS = ("empty", "not_gguf", "truncated", "truncated_header", "version_0", "version_1", "version_99",
                "big_endian", "unsupported_arch", "missing_tensor", "wrong_shape", "rope_freqs_nan",
                "adapter_wrong_arch", "adapter_wrong_shape", "adapter_missing_b", "adapter_nan", "adapter_inf",
                "adapter_not_adapter", "adapter_alpha_nan", "adapter_alpha_inf", "adapter_truncated",
                "adapter_version_99")


def _set_gguf_version(path: Path, version: int, byteorder: str = "little") -> None:
    """Overwrites the header's version word (bytes 4..8, after the magic); the rest stays a valid v3 file."""
    data = bytearray(path.read_bytes())
    data[4:8] = version.to_bytes(4, byteorder)
    path.write_bytes(bytes(data))


def write_broken(path: PathLike, kind: str, spec: ModelSpec) -> Path:
    """A file that must be refused with a clear error, of the given kind (see BROKEN_KINDS)."""
    path = Path(path)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_gguf":
        path.write_text("this is a text file, not a model\n" * 10)
    elif kind in ("truncated", "truncated_header"):
        write_model(path, spec)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3] if kind == "truncated" else data[:200])
    elif kind.startswith("version_") or kind == "big_endian":
        write_model(path, spec)
        if kind == "big_endian":  # version 3 as a big-endian file writes it
            _set_gguf_version(path, 3, "big")
        else:
            _set_gguf_version(path, int(kind[len("version_"):]))
    elif kind == "rope_freqs_nan":
        writer = GGUFWriter(str(path), spec.arch)
        _write_header(writer, spec)
        for name, array in model_tensors(dataclasses.replace(spec, rope_freq_factors=True)).items():
            if name == "rope_freqs.weight":
                array = array.copy()
                array[1] = np.nan
            _add(writer, name, array)
        _finish(writer)
    elif kind in ("unsupported_arch", "missing_tensor", "wrong_shape"):
        arch = "gpt2" if kind == "unsupported_arch" else spec.arch
        writer = GGUFWriter(str(path), arch)
        _write_header(writer, spec, arch=arch)
        for name, array in model_tensors(spec).items():
            if kind == "missing_tensor" and name == "blk.0.ffn_up.weight":
                continue
            if kind == "wrong_shape" and name == "blk.0.attn_q.weight":
                array = array[:-8]
            _add(writer, name, array)
        _finish(writer)
    elif kind in ("adapter_truncated", "adapter_version_99"):
        write_adapter(path, spec, seed=99)
        if kind == "adapter_truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
        else:
            _set_gguf_version(path, 99)
    elif kind.startswith("adapter_"):
        tensors = adapter_tensors(spec, ("attn_q", "attn_v"), 4, seed=99)
        first = next(iter(tensors))  # blk.0.attn_q.weight.lora_a
        arch = None
        metadata = None
        if kind == "adapter_wrong_arch":
            arch = "qwen2" if spec.arch != "qwen2" else "llama"
        elif kind == "adapter_wrong_shape":
            tensors[first] = np.concatenate([tensors[first], tensors[first][:, :16]], axis=1)
        elif kind == "adapter_missing_b":
            del tensors[first[: -len("_a")] + "_b"]
        elif kind in ("adapter_nan", "adapter_inf"):
            b = first[: -len("_a")] + "_b"
            tensors[b][3, 1] = np.nan if kind == "adapter_nan" else np.inf
        elif kind == "adapter_not_adapter":
            return write_model(path, spec)
        elif kind in ("adapter_alpha_nan", "adapter_alpha_inf"):
            metadata = {"adapter.lora.alpha": float("nan") if kind == "adapter_alpha_nan" else float("inf")}
        else:
            raise ValueError(f"unknown broken kind {kind!r}")
        write_adapter(path, spec, arch=arch, tensors=tensors, metadata=metadata)
    else:
        raise ValueError(f"unknown broken kind {kind!r}; one of {', '.join(BROKEN_KINDS)}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m logo_cpp.synthetic OUTDIR``: a small standard set of models and adapters."""
    parser = argparse.ArgumentParser(description="Write a small standard set of synthetic GGUF models and adapters.")
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    # GQA everywhere; llama untied with llama-3 rope factors, qwen2 tied with q/k/v biases, qwen3 with a
    # head size other than n_embd / n_head; llama256 has rows that K-quants accept.
    specs = {"llama": ModelSpec("llama", n_embd=128, n_layer=3, n_head=4, n_head_kv=2, n_ff=256,
                                rope_freq_factors=True, seed=1),
             "qwen2": ModelSpec("qwen2", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=192, tied_output=True,
                                seed=2),
             "qwen3": ModelSpec("qwen3", n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, head_dim=48, seed=3),
             "llama256": ModelSpec("llama", n_embd=256, n_layer=2, n_head=4, n_head_kv=1, n_ff=512, seed=4)}
    for name, spec in specs.items():
        f32 = write_model(out / f"{name}-f32.gguf", spec)
        if name == "llama256":
            quantize(f32, out / f"{name}-q4_k.gguf", "q4_k")
            continue
        write_model(out / f"{name}-f16.gguf", spec, "f16")
        quantize(f32, out / f"{name}-q8_0.gguf", "q8_0")
        write_adapter(out / f"{name}-lora-qv.gguf", spec, seed=10)
        write_adapter(out / f"{name}-lora-all.gguf", spec, targets=tuple(spec.matrix_shapes()), rank=4, alpha=8.0,
                      dtype="f16", seed=11)
    write_adapter(out / "llama-lora-mixed.gguf", specs["llama"], targets=("attn_q", "attn_v", "ffn_up"), rank=8,
                  ranks={"attn_v": 2}, dtype="bf16", seed=12)
    write_adapter(out / "llama-lora-q8_0.gguf", specs["llama"], rank=32, alpha=32.0, dtype="q8_0", seed=13)
    write_adapter(out / "llama256-lora-qv.gguf", specs["llama256"], seed=14)
    print(f"wrote {len(list(out.glob('*.gguf')))} files to {out}")


if __name__ == "__main__":
    main()
