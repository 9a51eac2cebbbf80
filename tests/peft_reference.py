"""PEFT LoRA directories for tests, written with `safetensors` and `json` (no torch), and an independent
numpy reference of what PEFT computes from them.

The reference follows PEFT 0.21's source, not logo_cpp.peft: `LoraModel._create_and_replace` picks a
module's r and alpha with `peft.utils.other.get_pattern_key` (the first key of rank_pattern / alpha_pattern,
in the config's order, for which `re.match(rf"(.*\\.)?({key})$", module_key)` matches), and
`LoraLayer.update_layer` sets `scaling = lora_alpha / math.sqrt(r)` with use_rslora, else `lora_alpha / r`.
The delta of a linear map is `scaling * lora_B @ lora_A` in Hugging Face's (out, in) layout; for the llama
architecture llama.cpp's converter reorders the rows of q_proj / k_proj per head from [first halves; second
halves] to interleaved pairs (its `LlamaModel.permute`), written here as an explicit index map.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import safetensors

HF_MODULES = {"q_proj": ("self_attn", "attn_q"), "k_proj": ("self_attn", "attn_k"), "v_proj": ("self_attn", "attn_v"),
              "o_proj": ("self_attn", "attn_output"), "gate_proj": ("mlp", "ffn_gate"), "up_proj": ("mlp", "ffn_up"),
              "down_proj": ("mlp", "ffn_down")}
ALL_TARGETS = tuple(HF_MODULES)
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def module_key(layer: int, module: str) -> str:
    """The module's name in the Hugging Face model (what PEFT matches patterns against)."""
    return f"model.layers.{layer}.{HF_MODULES[module][0]}.{module}"


def pattern_value(pattern: dict, key: str, default):
    for k in pattern:
        if re.match(rf"(.*\.)?({k})$", key):
            return pattern[k]
    return default


def rank_alpha_scale(config: dict, key: str) -> tuple[int, float, float]:
    r = pattern_value(config.get("rank_pattern") or {}, key, config["r"])
    alpha = pattern_value(config.get("alpha_pattern") or {}, key, config["lora_alpha"])
    scale = alpha / np.sqrt(r) if config.get("use_rslora") else alpha / r
    return int(r), float(alpha), float(scale)


def llama_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """GGUF row i of a llama Q/K projection is Hugging Face row order[i]."""
    hd = n_rows // n_head
    order = np.empty(n_rows, dtype=np.int64)
    for h in range(n_head):
        for i in range(hd // 2):
            for j in range(2):
                order[h * hd + 2 * i + j] = h * hd + j * (hd // 2) + i
    return order


def read_peft(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors as float64) of a PEFT directory."""
    config = json.loads((Path(directory) / "adapter_config.json").read_text())
    tensors = {}
    for name, t in safetensors.deserialize((Path(directory) / "adapter_model.safetensors").read_bytes()):
        raw = np.frombuffer(t["data"], dtype={"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[t["dtype"]])
        if t["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float64).reshape(t["shape"])
    return config, tensors


def reference_deltas(directory: Path, arch: str, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """GGUF weight name -> the dense delta PEFT adds to it, (n_out, n_in) float64, rows in GGUF order."""
    config, tensors = read_peft(directory)
    deltas = {}
    for name, a in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(model\.layers\.(\d+)\.\w+\.(\w+))\.lora_A\.weight", name)
        if not m:
            continue
        key, layer, module = m.group(1), int(m.group(2)), m.group(3)
        b = tensors[name.replace("lora_A", "lora_B")]
        _, _, scale = rank_alpha_scale(config, key)
        delta = scale * b @ a
        if arch == "llama" and module in ("q_proj", "k_proj"):
            delta = delta[llama_row_order(delta.shape[0], n_head if module == "q_proj" else n_head_kv)]
        deltas[f"blk.{layer}.{HF_MODULES[module][1]}.weight"] = delta
    return deltas


def reference_logits(model, tokens, deltas: dict[str, np.ndarray]) -> np.ndarray:
    """Logits of tests/reference.py's ReferenceModel with W + delta in each adapted map, (n_tokens, n_vocab)."""
    x = model.block_input(tokens, model.n_layer, {w: (lambda d: lambda h: h @ d.T)(d) for w, d in deltas.items()})
    x = model._rms(x, model.w["output_norm.weight"])
    head = model.w.get("output.weight", model.w["token_embd.weight"])
    return x @ head.T


# -- writing ------------------------------------------------------------------------------------------

def _encode(array: np.ndarray, dtype: str) -> tuple[str, str, np.ndarray]:
    """(safetensors code, numpy-style name, data) of `array` stored as dtype f32, f16 or bf16."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "f32":
        return "F32", "float32", array
    if dtype == "f16":
        return "F16", "float16", array.astype(np.float16)
    if dtype == "bf16":  # round to nearest even, as torch does
        bits = array.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return "BF16", "bfloat16", bits.astype(np.uint16)
    raise ValueError(dtype)


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "f32") -> None:
    """Writes with the safetensors package: TensorSpec where it has one (0.8+), else its older dict form."""
    keep, specs = [], {}
    for name, array in tensors.items():
        code, numpy_name, data = _encode(array, dtype)
        keep.append(data)
        if hasattr(safetensors, "TensorSpec"):
            specs[name] = safetensors.TensorSpec(dtype=numpy_name, shape=list(array.shape), data_ptr=data.ctypes.data,
                                                 data_len=data.nbytes)
        else:
            specs[name] = {"dtype": code, "shape": list(array.shape), "data": data.tobytes()}
    Path(path).write_bytes(bytes(safetensors.serialize(specs, metadata={"format": "pt"})))


def write_peft(directory: Path, spec, *, targets: Sequence[str] = ("q_proj", "v_proj"), r: int = 8,
               lora_alpha: float = 16, rank_pattern: Optional[dict] = None, alpha_pattern: Optional[dict] = None,
               use_rslora: bool = False, prefix: bool = True, dtype: str = "f32", seed: int = 0,
               layers: Optional[Sequence[int]] = None, config: Optional[dict] = None,
               extra_tensors: Optional[dict] = None) -> Path:
    """A PEFT LoRA directory for a base of `spec` (logo_cpp.synthetic.ModelSpec) as `save_pretrained`
    writes one: adapter_config.json and adapter_model.safetensors with lora_A (r, in) and lora_B (out, r)
    per module, B non-zero so the adapter moves the output. `config` overrides or adds config keys."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": f"synthetic-{spec.arch}",
           "r": r, "lora_alpha": lora_alpha, "lora_dropout": 0.0, "target_modules": list(targets), "bias": "none",
           "fan_in_fan_out": False, "use_rslora": use_rslora, "use_dora": False, "modules_to_save": None,
           "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {}, "init_lora_weights": True,
           "layers_to_transform": None, "layers_pattern": None, "inference_mode": True, "lora_bias": False}
    cfg.update(config or {})
    rng = np.random.default_rng(seed)
    shapes = spec.matrix_shapes()
    tensors = {}
    for layer in (range(spec.n_layer) if layers is None else layers):
        for module in targets:
            key = module_key(layer, module)
            rank, _, _ = rank_alpha_scale(cfg, key)
            n_in, n_out = shapes[HF_MODULES[module][1]]
            name = ("base_model.model." if prefix else "") + key
            tensors[name + ".lora_A.weight"] = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
            tensors[name + ".lora_B.weight"] = rng.standard_normal((n_out, rank)) * 0.5 / np.sqrt(rank)
    tensors.update(extra_tensors or {})
    (directory / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    save_safetensors(directory / "adapter_model.safetensors", tensors, dtype)
    return directory


def write_hf_config(directory: Path, spec) -> Path:
    """The base model's Hugging Face config.json, which llama.cpp's convert_lora_to_gguf.py reads (--base)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": [HF_ARCHITECTURES[spec.arch]], "model_type": spec.arch, "hidden_size": spec.n_embd,
           "intermediate_size": spec.n_ff, "num_attention_heads": spec.n_head, "num_hidden_layers": spec.n_layer,
           "num_key_value_heads": spec.n_head_kv, "head_dim": spec.hd, "rms_norm_eps": spec.eps,
           "rope_theta": spec.rope_theta, "max_position_embeddings": spec.n_ctx_train, "vocab_size": spec.n_vocab(),
           "tie_word_embeddings": spec.tied_output, "hidden_act": "silu", "torch_dtype": "float32"}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory
