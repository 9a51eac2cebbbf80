"""Probe data for the calibration study: hidden states of a prompt set at every block, and LoRA A/B of a pool.

Hidden states come from the runtime itself (``Model.hidden_states``: the residual entering each block, the
paper's h), one forward pass per prompt, and are cached as .npz next to the data so that candidate signals
can be compared in numpy in seconds. Adapters are read with the ``gguf`` package, independently of the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


@dataclass
class ProbeSet:
    """Hidden states of P prompts at every block: ``last`` and ``mean`` are float32 (P, n_layer, n_embd):
    the last prompt token, and the mean over the prompt's tokens after BOS."""

    prompts: list[str]
    last: np.ndarray
    mean: np.ndarray
    n_tokens: np.ndarray  # (P,) int
    # Every token's hidden state at blocks token_layers (when asked for): float16 (sum(n_tokens), L, n_embd),
    # prompt p's rows at offsets[p]:offsets[p + 1].
    tokens: np.ndarray | None = None
    token_layers: tuple = ()

    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_tokens)])


def _key(model_path: str, prompts: list[str]) -> str:
    h = hashlib.sha256(str(Path(model_path).resolve()).encode())
    for p in prompts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:16]


def probe_set(model, prompts: list[str], cache_dir: Path, label: str, token_layers: tuple = ()) -> ProbeSet:
    """Hidden states of ``prompts`` (raw text, BOS added as the tokenizer does), cached by model and prompts;
    with ``token_layers``, every token's state at those blocks too (BOS rows left out)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _key(model.path, prompts)
    path = cache_dir / f"{label}-{key}.npz"
    tok_path = cache_dir / f"{label}-tokens-{'-'.join(map(str, token_layers))}-{key}.npz"
    if path.exists() and (not token_layers or tok_path.exists()):
        z = np.load(path)
        out = ProbeSet(prompts, z["last"], z["mean"], z["n_tokens"])
        if token_layers:
            t = np.load(tok_path)
            out.tokens, out.token_layers, out.n_tokens = t["tokens"], tuple(token_layers), t["n_tokens"]
        return out
    last, mean, counts, rows = [], [], [], []
    for i, prompt in enumerate(prompts):
        ids = model.tokenize(prompt, add_special=True, parse_special=True)
        hs = model.hidden_states(ids)  # (n_layer, n_tokens, n_embd)
        start = 1 if len(ids) > 1 and ids[0] == model.bos else 0
        last.append(hs[:, -1])
        mean.append(hs[:, start:].mean(axis=1))
        counts.append(len(ids) - start)
        if token_layers:
            rows.append(hs[list(token_layers), start:].transpose(1, 0, 2).astype(np.float16))
        if (i + 1) % 200 == 0:
            print(f"  {label}: {i + 1}/{len(prompts)} prompts probed", flush=True)
    out = ProbeSet(prompts, np.stack(last), np.stack(mean), np.array(counts))
    np.savez(path, last=out.last, mean=out.mean, n_tokens=out.n_tokens)
    if token_layers:
        out.tokens, out.token_layers = np.concatenate(rows), tuple(token_layers)
        np.savez(tok_path, tokens=out.tokens, n_tokens=out.n_tokens)
    return out


@dataclass
class LoraPair:
    a: np.ndarray  # (r, n_in) float64
    b: np.ndarray  # (n_out, r) float64
    scale: float   # alpha / r, or 1 without alpha (llama.cpp's rule)

    def delta(self) -> np.ndarray:
        """scale * B A, (n_out, n_in)."""
        return self.scale * self.b @ self.a


def read_adapter(path: str) -> dict[tuple[int, str], LoraPair]:
    """Every LoRA pair of a GGUF adapter keyed by (layer, module), e.g. (29, "attn_q")."""
    reader = GGUFReader(path)
    field = reader.fields.get("adapter.lora.alpha")
    alpha = float(field.contents()) if field is not None else 0.0
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        tensors[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(shape)
    pairs = {}
    for name, a in tensors.items():
        if not name.endswith(".weight.lora_a") or not name.startswith("blk."):
            continue
        weight = name[: -len(".lora_a")]
        _, layer, module, _ = weight.split(".")
        b = tensors[weight + ".lora_b"]
        r = a.shape[0]
        pairs[(int(layer), module)] = LoraPair(a, b, alpha / r if alpha != 0 else 1.0)
    return pairs


def read_norm_weights(model_path: str) -> dict[int, np.ndarray]:
    """Each block's attention RMSNorm weight (the scale applied before attn_q/k/v), float64 (n_embd,)."""
    reader = GGUFReader(model_path)
    out = {}
    for t in reader.tensors:
        if t.name.endswith(".attn_norm.weight"):
            out[int(t.name.split(".")[1])] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).ravel()
    return out


def read_rms_eps(model_path: str) -> float:
    reader = GGUFReader(model_path)
    arch = reader.fields["general.architecture"].contents()
    f = reader.fields.get(f"{arch}.attention.layer_norm_rms_epsilon")
    return float(f.contents()) if f is not None else 1e-5


def load_pool_dir(pool_dir: Path) -> tuple[dict, list[dict]]:
    """(manifest, eval items) of a pool directory laid out as models/pool is."""
    manifest = json.loads((pool_dir / "manifest.json").read_text())
    eval_file = pool_dir / manifest.get("eval", {}).get("file", "eval.jsonl")
    items = [json.loads(line) for line in eval_file.read_text().splitlines() if line.strip()]
    return manifest, items
