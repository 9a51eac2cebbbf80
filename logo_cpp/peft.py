"""Hugging Face PEFT LoRA adapters, read without torch: `adapter_config.json` and
`adapter_model.safetensors` (tensors through the `safetensors` package, as numpy), mapped onto a base
GGUF's tensor names with each module's own scale.

What a PEFT directory means, as PEFT 0.21 computes it (peft/tuners/lora/model.py `_create_and_replace`,
layer.py `update_layer`, utils/other.py `get_pattern_key`):

- A module's rank r and alpha are `rank_pattern` / `alpha_pattern` values of the first key (in the config's
  order) for which ``re.match(rf"(.*\\.)?({key})$", module_key)`` matches, else `r` / `lora_alpha`.
- Its scale is ``alpha / sqrt(r)`` with `use_rslora`, else ``alpha / r``; its output is
  ``W x + scale * lora_B @ lora_A @ x``.

llama.cpp's converter (convert_lora_to_gguf.py) reorders the rows of the llama architecture's q_proj and
k_proj per head into its RoPE layout (interleaved pairs); the same reordering is applied to lora_B here,
so an adapter and its base stay consistent. qwen2 and qwen3 keep Hugging Face's order.

`fan_in_fan_out` is ignored as PEFT ignores it for torch.nn.Linear (the only layer type targeted here).
Everything that is not a plain low-rank delta on the seven block linear maps is refused with an error
naming the file and the setting, before anything is loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ._core import FormatError
from ._limits import FLOAT32_MAX

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Hugging Face module name -> (its parent in a decoder layer, the GGUF tensor it adapts); the same for
# llama, qwen2 and qwen3.
MODULES = {"q_proj": ("self_attn", "attn_q"), "k_proj": ("self_attn", "attn_k"), "v_proj": ("self_attn", "attn_v"),
           "o_proj": ("self_attn", "attn_output"), "gate_proj": ("mlp", "ffn_gate"), "up_proj": ("mlp", "ffn_up"),
           "down_proj": ("mlp", "ffn_down")}
ARCHS = ("llama", "qwen2", "qwen3")
# llama.cpp's converter permutes Q/K rows for these (LlamaModel.undo_permute).
PERMUTED_ARCHS = ("llama",)

# "base_model.model." is what PeftModel.save_pretrained adds; "model." is the decoder inside *ForCausalLM
# (absent when the adapter was made on a bare LlamaModel).
_TENSOR = re.compile(r"(?:base_model\.model\.)?((?:model\.)?layers\.(\d+)\.(\w+)\.(\w+))\.lora_([AB])\.weight")

# Settings whose forward pass is not `W x + scale * B A x` on the unchanged base.
_VARIANTS = {
    "use_dora": "DoRA (weight-decomposed LoRA) rescales every output column by a learned magnitude",
    "use_qalora": "QA-LoRA pools the input before lora_A",
    "alora_invocation_tokens": "activated LoRA (aLoRA) applies only after its invocation tokens",
    "use_bdlora": "block-diagonal LoRA stores lora_A or lora_B in a block-diagonal layout",
    "arrow_config": "Arrow routes between several adapters at inference",
    "kasa_config": "KaSA adds a learned singular-value diagonal and truncates the base weights",
    "monteclora_config": "MonteCLoRA samples its lora_A perturbations at inference",
    "lora_bias": "lora_bias trains a bias on lora_B",
    "layer_replication": "layer_replication changes the base model's layer stack",
    "target_parameters": "target_parameters puts LoRA on raw parameters (e.g. MoE experts), not on linear maps",
    "trainable_token_indices": "trainable_token_indices trains rows of the token embedding",
    "modules_to_save": "modules_to_save stores whole trained copies of modules",
}
# init_lora_weights values that change the base weights themselves; PEFT's save_pretrained with
# path_initial_model_for_weight_conversion turns such an adapter into a plain one (and writes True).
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga")


class AdapterWarning(UserWarning):
    """An adapter logo-cpp loads as its format says, but which is probably not what its author meant (e.g. an
    alpha of 0: PEFT accepts it, and the adapter then changes nothing)."""


@dataclass
class PeftMatrix:
    """One adapted linear map: output ``W x + scale * b @ a @ x``."""

    weight: str          # base GGUF tensor, e.g. "blk.3.attn_q.weight"
    key: str             # the module in the Hugging Face model, e.g. "model.layers.3.self_attn.q_proj"
    a: np.ndarray        # lora_A, (r, n_in) float32
    b: np.ndarray        # lora_B, (n_out, r) float32, rows in the base GGUF's order
    rank: int
    alpha: float
    scale: float         # alpha / r, or alpha / sqrt(r) with use_rslora (PEFT's LoraLayer.scaling)
    dtype: str           # the safetensors type it was stored in: "f32", "f16" or "bf16"
    a_name: str          # the safetensors tensor names, for messages
    b_name: str


@dataclass
class PeftAdapter:
    name: str
    directory: Path
    weights: Path                      # adapter_model.safetensors
    config: dict
    matrices: list[PeftMatrix] = field(default_factory=list)

    @property
    def kept_type(self) -> str:
        """The type the pool keeps it in: the file's own (f32 when A and B differ or when it held f64)."""
        types = {m.dtype for m in self.matrices}
        return types.pop() if len(types) == 1 else "f32"


# -- finding adapters ---------------------------------------------------------------------------------

def is_peft_path(path: PathLike) -> bool:
    """A PEFT adapter directory (it holds adapter_config.json) or a .safetensors file."""
    p = Path(path)
    return (p.is_dir() and (p / CONFIG_FILE).is_file()) or (p.suffix == ".safetensors" and not p.is_dir())


def adapter_files(path: PathLike) -> tuple[Path, Path, Path]:
    """(directory, adapter_config.json, adapter_model.safetensors) of a PEFT adapter given as its directory
    or its safetensors file. Raises FileNotFoundError, or FormatError for a torch-pickle-only adapter."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: '{p}'")
    if not p.is_dir() and p.suffix != ".safetensors":
        kind = "a GGUF file" if p.suffix == ".gguf" else "not a directory or a .safetensors file"
        raise FormatError(f"'{p}' is {kind}: a PEFT adapter is a directory holding {CONFIG_FILE} and {WEIGHTS_FILE} "
                          f"(or that .safetensors file)")
    directory, weights = (p, p / WEIGHTS_FILE) if p.is_dir() else (p.parent, p)
    config = directory / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"PEFT adapter '{directory}' has no {CONFIG_FILE}")
    if not weights.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise FormatError(f"PEFT adapter '{directory}' has only adapter_model.bin (a torch pickle); logo-cpp reads "
                              f"{WEIGHTS_FILE} without torch: save it with safe_serialization=True")
        raise FileNotFoundError(f"PEFT adapter '{directory}' has no {WEIGHTS_FILE}")
    return directory, config, weights


# -- the config ---------------------------------------------------------------------------------------

def read_config(path: PathLike) -> dict:
    """adapter_config.json, checked: a plain LoRA whose every module is a low-rank delta on the base.
    Raises FormatError naming the file and the setting."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"'{path}' is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FormatError(f"'{path}' holds a JSON {type(config).__name__}, expected an object")
    where = f"PEFT adapter config '{path}'"
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise FormatError(f"{where}: peft_type is {peft_type!r}; only 'LORA' adapters are low-rank deltas logo-cpp serves")
    for key, why in _VARIANTS.items():
        if config.get(key):
            raise FormatError(f"{where}: {key} is set ({json.dumps(config[key])}): {why}, which is not a plain "
                              f"low-rank delta W + scale * B A, so logo-cpp cannot apply it")
    bias = config.get("bias", "none")
    if bias != "none":
        raise FormatError(f"{where}: bias is {bias!r}: the adapter trained biases of the base model, which a LoRA "
                          f"delta cannot carry; only bias='none' is supported")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise FormatError(f"{where}: init_lora_weights is {init!r}, which changes the base weights themselves; convert "
                          f"it to a plain LoRA with PEFT (save_pretrained(..., path_initial_model_for_weight_conversion=...))")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise FormatError(f"{where}: {key} is {value!r}, expected a finite number")
    if config["r"] <= 0:
        raise FormatError(f"{where}: r is {config['r']}, expected a positive integer")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            raise FormatError(f"{where}: {key} is {pattern!r}, expected an object of module pattern -> number")
        for k, v in pattern.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (key == "rank_pattern" and v <= 0):
                raise FormatError(f"{where}: {key}[{k!r}] is {v!r}, expected a finite{' positive' if key == 'rank_pattern' else ''} number")
            try:
                re.compile(k)
            except re.error as exc:
                raise FormatError(f"{where}: {key} key {k!r} is not a regular expression ({exc})") from None
    targets = config.get("target_modules")
    if isinstance(targets, list):
        for t in targets:
            leaf = str(t).rsplit(".", 1)[-1]
            if leaf in ("embed_tokens", "lm_head"):
                raise FormatError(f"{where}: target_modules has {t!r}: logo-cpp adapts only the blocks' linear maps "
                                  f"({', '.join(MODULES)}), not the token embedding or the output head")
            if leaf not in MODULES:
                raise FormatError(f"{where}: target_modules has {t!r}, which is not one of the linear maps of a "
                                  f"llama/qwen2/qwen3 block ({', '.join(MODULES)})")
    return config


def _pattern_key(pattern: dict, key: str) -> Optional[str]:
    # peft.utils.other.get_pattern_key: the first pattern key (config order) matching the end of the module key.
    for k in pattern:
        if re.match(rf"(.*\.)?({k})$", key):
            return k
    return None


def module_rank_alpha(config: dict, key: str) -> tuple[int, float]:
    """r and alpha PEFT gives the module `key` (e.g. "model.layers.0.self_attn.q_proj")."""
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rk, ak = _pattern_key(ranks, key), _pattern_key(alphas, key)
    return int(ranks[rk] if rk is not None else config["r"]), float(alphas[ak] if ak is not None else config["lora_alpha"])


def alpha_setting(config: dict, key: str) -> str:
    """The config setting the module `key` takes its alpha from: 'lora_alpha' or "alpha_pattern['...']"."""
    ak = _pattern_key(config.get("alpha_pattern") or {}, key)
    return "lora_alpha" if ak is None else f"alpha_pattern[{ak!r}]"


def _warn_zero_alpha(config_path: Path, adapter: "PeftAdapter") -> None:
    # PEFT accepts an alpha of 0 (LoraConfig and LoraLayer.update_layer check only r > 0): the scale alpha / r is
    # then 0 and those modules change nothing, which is loadable but almost certainly not what was meant.
    zero: dict[str, int] = {}
    for m in adapter.matrices:
        if m.alpha == 0:
            setting = alpha_setting(adapter.config, m.key)
            zero[setting] = zero.get(setting, 0) + 1
    for setting, n in zero.items():
        warnings.warn(f"PEFT adapter config '{config_path}': {setting} is 0, so the scale alpha / r of {n} of its "
                      f"{len(adapter.matrices)} LoRA matrices is 0 and they change nothing (PEFT accepts this; was the "
                      f"adapter saved with the alpha it was trained with?)", AdapterWarning, stacklevel=3)


def lora_scale(config: dict, rank: int, alpha: float) -> float:
    """PEFT's LoraLayer.scaling: alpha / sqrt(r) with use_rslora (rank-stabilised LoRA), else alpha / r."""
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# -- the tensors --------------------------------------------------------------------------------------

def _read_tensors(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (float32 array, stored type) through safetensors.deserialize (numpy has no bfloat16, so
    raw bytes come back and BF16 is widened here)."""
    import safetensors

    data = path.read_bytes()
    try:
        entries = safetensors.deserialize(data)
    except Exception as exc:  # SafetensorError and friends for truncated or foreign files
        raise FormatError(f"'{path}' {_truncation(data) or f'is not a readable safetensors file ({exc})'}") from None
    out = {}
    for name, t in entries:
        code, shape, data = t["dtype"], tuple(t["shape"]), t["data"]
        if code == "F32":
            values, kept = np.frombuffer(data, dtype="<f4"), "f32"
        elif code == "F16":
            values, kept = np.frombuffer(data, dtype="<f2"), "f16"
        elif code == "BF16":
            values, kept = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32), "bf16"
        elif code == "F64":
            values, kept = np.frombuffer(data, dtype="<f8"), "f32"
        else:
            raise FormatError(f"'{path}': tensor '{name}' has type {code}; LoRA tensors must be F32, F16, BF16 or F64")
        out[name] = (values.astype(np.float32).reshape(shape), kept)
    return out


def _truncation(data: bytes) -> Optional[str]:
    """What is cut off in a safetensors file that the library refused ("incomplete metadata, file not fully
    covered" says neither what nor where), or None when it is not a cut: the format is an 8-byte
    little-endian header length, a JSON header giving each tensor's [begin, end) data offsets, then the data."""
    if not data:
        return "is empty, expected a safetensors file"
    header_end = 8 + int.from_bytes(data[:8], "little")
    if len(data) < 9 or data[8:9] != b"{" or header_end > 8 + 100 * 2**20:
        return None  # not the start of a safetensors file (the library caps the header at 100 MB)
    if header_end > len(data):
        return f"is truncated: its header needs bytes up to {header_end} but the file has {len(data)}"
    try:
        header = json.loads(data[8:header_end])
        extents = sorted((int(v["data_offsets"][1]), k) for k, v in header.items() if k != "__metadata__")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    for end, name in extents:
        if header_end + end > len(data):
            return f"is truncated: tensor '{name}' needs bytes up to {header_end + end} but the file has {len(data)}"
    return None


def _llama_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's LlamaModel.permute: per head, rows [first halves; second halves] -> interleaved pairs.
    n_rows = b.shape[0]
    if n_head < 1 or n_rows % (2 * n_head) != 0:
        return b  # not this base's shape: the pool's shape check refuses it with both shapes
    return b.reshape(n_head, 2, n_rows // n_head // 2, b.shape[1]).swapaxes(1, 2).reshape(b.shape)


def read_adapter(path: PathLike, name: Optional[str] = None) -> PeftAdapter:
    """A PEFT LoRA adapter (its directory or its safetensors file): config checked, tensors paired, each
    module's rank, alpha and scale computed, GGUF weight names assigned; lora_B rows still in Hugging
    Face's order (see for_base). Shapes against a base are checked when the adapter enters a pool.

    Raises FileNotFoundError, or FormatError (a ValueError) naming the file and the setting or tensor for
    anything that is not a plain low-rank delta on q/k/v/o/gate/up/down_proj; the first offending tensor in block
    order (layer, module, A before B) is the one named. Warns (AdapterWarning) naming the setting when an alpha
    of 0 makes modules change nothing."""
    directory, config_path, weights = adapter_files(path)
    config = read_config(config_path)
    tensors = _read_tensors(weights)
    where = f"PEFT adapter '{weights}'"
    pairs: dict[str, dict[str, str]] = {}
    # Checked in block order (layer, module, A before B), not in the order the safetensors library lists them
    # (a hash map's: it changes between calls), so every command names the same first offending tensor.
    for tensor_name in sorted(tensors, key=_block_order):
        m = _TENSOR.fullmatch(tensor_name)
        if m is None:
            raise FormatError(_unexpected_tensor(where, tensor_name))
        key, layer, parent, module, side = m.groups()
        if module not in MODULES or MODULES[module][0] != parent:
            raise FormatError(f"{where}: tensor '{tensor_name}' adapts '{parent}.{module}', which is not one of the "
                              f"linear maps of a llama/qwen2/qwen3 block ({', '.join(MODULES)})")
        sides = pairs.setdefault(key, {})
        if side in sides:
            raise FormatError(f"{where}: '{sides[side]}' and '{tensor_name}' are both lora_{side} of '{key}'")
        sides[side] = tensor_name
    if not pairs:
        raise FormatError(f"{where} holds no LoRA tensors")

    adapter = PeftAdapter(name or directory.name, directory, weights, config)
    for key, sides in pairs.items():
        if set(sides) != {"A", "B"}:
            have = next(iter(sides.values()))
            missing = "lora_B" if "A" in sides else "lora_A"
            raise FormatError(f"{where}: tensor '{have}' has no matching {missing}")
        (a, a_type), (b, b_type) = tensors[sides["A"]], tensors[sides["B"]]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise FormatError(f"{where}: '{sides['A']}' has shape {list(a.shape)} and '{sides['B']}' {list(b.shape)}; "
                              f"expected lora_A (r, in) and lora_B (out, r)")
        rank, alpha = module_rank_alpha(config, key)
        if a.shape[0] != rank:
            raise FormatError(f"{where}: '{sides['A']}' has rank {a.shape[0]} but {CONFIG_FILE} gives '{key}' r = {rank} "
                              f"(r / rank_pattern), so its scale would be wrong")
        scale = lora_scale(config, rank, alpha)
        # The pool holds scales as float32 (_limits): an alpha like 1e40 is finite here but not there.
        if not abs(scale) <= FLOAT32_MAX:
            raise FormatError(f"{where}: {alpha_setting(config, key)} = {alpha!r} with r = {rank} gives '{key}' the scale "
                              f"{scale!r}, beyond float32; expected |scale| <= {FLOAT32_MAX:.3g}")
        m = _TENSOR.fullmatch(sides["A"])
        adapter.matrices.append(PeftMatrix(
            weight=f"blk.{int(m.group(2))}.{MODULES[m.group(4)][1]}.weight", key=key, a=a, b=b, rank=rank, alpha=alpha,
            scale=scale, dtype=a_type if a_type == b_type else "f32",
            a_name=sides["A"], b_name=sides["B"]))
    _warn_zero_alpha(config_path, adapter)
    return adapter  # matrices in block order, as the pairs were made


def _block_order(tensor_name: str) -> tuple:
    """Sort key of a tensor name: LoRA tensors by layer, module (MODULES' order) and side; anything else after
    them, by name."""
    m = _TENSOR.fullmatch(tensor_name)
    if m is None:
        return (1, 0, 0, tensor_name)
    module = m.group(4)
    return (0, int(m.group(2)), list(MODULES).index(module) if module in MODULES else len(MODULES), tensor_name)


def for_base(adapter: PeftAdapter, arch: str, n_head: int, n_head_kv: int) -> PeftAdapter:
    """The adapter with lora_B rows in the order of a base GGUF of architecture `arch` (llama, qwen2, qwen3)
    with `n_head` query and `n_head_kv` key/value heads: llama's q_proj / k_proj rows permuted as llama.cpp's
    converter permutes the base weights. Raises FormatError for other architectures."""
    if arch not in ARCHS:
        raise FormatError(f"PEFT adapter '{adapter.directory}': the base model's architecture is '{arch}'; logo-cpp "
                          f"maps PEFT module names for {', '.join(ARCHS)}")
    matrices = []
    for m in adapter.matrices:
        b = m.b
        module = m.key.rsplit(".", 1)[-1]
        if arch in PERMUTED_ARCHS and module in ("q_proj", "k_proj"):
            b = _llama_rows(b, n_head if module == "q_proj" else n_head_kv)
        matrices.append(replace(m, a=np.ascontiguousarray(m.a), b=np.ascontiguousarray(b)))
    return replace(adapter, matrices=matrices)


def load_for_model(path: PathLike, model_core, name: Optional[str] = None) -> PeftAdapter:
    """read_adapter + for_base for a loaded model (its _core: arch, n_head, n_head_kv)."""
    return for_base(read_adapter(path, name), model_core.arch, model_core.n_head, model_core.n_head_kv)


def _unexpected_tensor(where: str, name: str) -> str:
    if "lora_embedding_" in name or ".embed_tokens." in name:
        return (f"{where}: tensor '{name}' adapts the token embedding; logo-cpp adapts only the blocks' linear maps "
                f"({', '.join(MODULES)})")
    if ".lm_head." in name:
        return (f"{where}: tensor '{name}' adapts the output head (lm_head); logo-cpp adapts only the blocks' linear "
                f"maps ({', '.join(MODULES)})")
    if "modules_to_save" in name or name.endswith(".bias") or (name.endswith(".weight") and ".lora_" not in name):
        return (f"{where}: tensor '{name}' is a trained copy of a base weight or bias (modules_to_save, bias training "
                f"or saved embeddings), not a LoRA delta; logo-cpp cannot apply it")
    return (f"{where}: unexpected tensor '{name}'; expected [base_model.model.]model.layers.N.{{self_attn,mlp}}."
            f"{{{','.join(MODULES)}}}.lora_{{A,B}}.weight")


def as_core_adapter(adapter: PeftAdapter) -> tuple:
    """The tuple _core.AdapterPool.add_tensors takes for this adapter."""
    kept = adapter.kept_type
    return (adapter.name, str(adapter.weights), float(adapter.config["lora_alpha"]),
            [(m.weight, m.a, m.b, float(m.scale), kept, m.a_name, m.b_name) for m in adapter.matrices])
