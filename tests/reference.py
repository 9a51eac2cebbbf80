"""An independent numpy reference of the forward pass up to a block and of LoGo's signals, reading the
same GGUF files with the `gguf` package (no ggml, no libllama). Used as the oracle in the tests."""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def load_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor as float32 numpy in (ne1, ne0) order: a weight W has shape (n_out, n_in)."""
    reader = GGUFReader(path)
    out = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return out


class ReferenceModel:
    def __init__(self, path: str):
        reader = GGUFReader(path)
        self.arch = _field(reader, "general.architecture")
        a = self.arch + "."
        self.n_layer = int(_field(reader, a + "block_count"))
        self.n_head = int(_field(reader, a + "attention.head_count"))
        self.n_head_kv = int(_field(reader, a + "attention.head_count_kv", self.n_head))
        self.eps = float(_field(reader, a + "attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(_field(reader, a + "rope.freq_base", 10000.0))
        self.w = load_tensors(path)
        self.n_embd = self.w["token_embd.weight"].shape[1]
        self.head_dim = self.w["blk.0.attn_q.weight"].shape[0] // self.n_head
        self.neox = self.arch in ("qwen2", "qwen3")

    def _rms(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x, positions):
        # x: (n_tokens, n_heads, head_dim)
        d = self.head_dim
        inv = self.base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        factors = self.w.get("rope_freqs.weight")
        if factors is not None:
            inv = inv / factors.astype(np.float64)
        theta = positions[:, None].astype(np.float64) * inv[None, :]  # (n_tokens, d/2)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        if self.neox:
            x0, x1 = x[..., : d // 2], x[..., d // 2:]
        else:
            x0, x1 = x[..., 0::2], x[..., 1::2]
        r0 = x0 * cos - x1 * sin
        r1 = x0 * sin + x1 * cos
        out = np.empty_like(x, dtype=np.float64)
        if self.neox:
            out[..., : d // 2], out[..., d // 2:] = r0, r1
        else:
            out[..., 0::2], out[..., 1::2] = r0, r1
        return out

    def _linear(self, name, x, deltas):
        y = x @ self.w[name].T
        if name in deltas:
            y = y + deltas[name](x)
        return y

    def block_input(self, tokens, layer, deltas=None):
        """Residual stream entering block `layer`, at every token: (n_tokens, n_embd), float64.
        `deltas` maps a weight name to a function x -> extra output (adapter terms)."""
        deltas = deltas or {}
        x = self.w["token_embd.weight"][np.asarray(tokens)].astype(np.float64)
        n = len(tokens)
        pos = np.arange(n)
        mask = np.triu(np.full((n, n), -np.inf), 1)
        group = self.n_head // self.n_head_kv
        for il in range(layer):
            p = f"blk.{il}."
            h = self._rms(x, self.w[p + "attn_norm.weight"])
            q = self._linear(p + "attn_q.weight", h, deltas)
            k = self._linear(p + "attn_k.weight", h, deltas)
            v = self._linear(p + "attn_v.weight", h, deltas)
            if p + "attn_q.bias" in self.w:
                q, k, v = q + self.w[p + "attn_q.bias"], k + self.w[p + "attn_k.bias"], v + self.w[p + "attn_v.bias"]
            q = q.reshape(n, self.n_head, self.head_dim)
            k = k.reshape(n, self.n_head_kv, self.head_dim)
            v = v.reshape(n, self.n_head_kv, self.head_dim)
            if p + "attn_q_norm.weight" in self.w:
                q = self._rms(q, self.w[p + "attn_q_norm.weight"])
                k = self._rms(k, self.w[p + "attn_k_norm.weight"])
            q, k = self._rope(q, pos), self._rope(k, pos)
            heads = []
            for hh in range(self.n_head):
                kv = hh // group
                scores = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.head_dim) + mask
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                scores /= scores.sum(axis=-1, keepdims=True)
                heads.append(scores @ v[:, kv, :])
            attn = np.concatenate(heads, axis=-1)
            x = x + self._linear(p + "attn_output.weight", attn, deltas)
            h = self._rms(x, self.w[p + "ffn_norm.weight"])
            gate = self._linear(p + "ffn_gate.weight", h, deltas)
            up = self._linear(p + "ffn_up.weight", h, deltas)
            act = gate / (1.0 + np.exp(-gate)) * up
            x = x + self._linear(p + "ffn_down.weight", act, deltas)
        return x


class ReferenceAdapter:
    def __init__(self, path: str):
        reader = GGUFReader(path)
        self.alpha = float(_field(reader, "adapter.lora.alpha", 0.0))
        tensors = load_tensors(path)
        self.pairs = {}  # weight name -> (A (r, n_in), B (n_out, r), scale)
        for name, a in tensors.items():
            if name.endswith(".lora_a"):
                weight = name[: -len(".lora_a")]
                b = tensors[weight + ".lora_b"]
                r = a.shape[0]
                scale = self.alpha / r if self.alpha != 0 else 1.0
                self.pairs[weight] = (a.astype(np.float64), b.astype(np.float64), scale)

    def output(self, weight, x):
        a, b, scale = self.pairs[weight]
        return scale * (x @ a.T) @ b.T


def mixture_deltas(adapters, weights):
    """Deltas for the weighted sum of adapters in every linear map they adapt."""
    names = sorted({w for ad in adapters for w in ad.pairs})

    def make(weight):
        return lambda x: sum(wt * ad.output(weight, x) for ad, wt in zip(adapters, weights) if weight in ad.pairs)

    return {n: make(n) for n in names}


def logo_signals(model: ReferenceModel, adapters, tokens, layer=-1, module="attn_q", probe="base"):
    """(probe vector h, norms, entropies, scored) exactly as the method states them."""
    layer = layer % model.n_layer
    deltas = mixture_deltas(adapters, [1.0] * len(adapters)) if probe == "all" else None
    h = model.block_input(tokens, layer, deltas)[-1]
    weight = f"blk.{layer}.{module}.weight"
    norms, entropies, scored = [], [], []
    for ad in adapters:
        if weight not in ad.pairs:
            norms.append(np.nan)
            entropies.append(np.nan)
            scored.append(False)
            continue
        o = ad.output(weight, h)
        norms.append(np.linalg.norm(o))
        p = np.exp(o - o.max())
        p /= p.sum()
        entropies.append(-np.sum(p * np.log(p + 1e-8)))
        scored.append(True)
    return h, np.array(norms), np.array(entropies), np.array(scored)


def select(signals, scored, k):
    """Top-k indices (ties to the lower index) and weights s_i / sum over the selected."""
    order = [i for i in np.argsort(-np.where(scored, signals, -np.inf), kind="stable") if scored[i]][:k]
    s = np.array([signals[i] for i in order])
    return order, s / s.sum()


# -- calibrated signals (logo_cpp.LoGo(calibration=...), logo_cpp.Arrow) ------------------------------------

_SPECTRA: dict = {}


def lora_spectrum(pair):
    """(||s B A||_F, ||s B A||_2, top right singular vector of B A) by a full numpy SVD of the product
    (memoised per pair object: a z-score asks for it once per generic prompt)."""
    key = id(pair)
    if key not in _SPECTRA or _SPECTRA[key][0] is not pair:
        a, b, scale = pair
        _, sv, vt = np.linalg.svd(scale * b @ a)
        _SPECTRA[key] = (pair, (float(np.sqrt(np.sum(sv ** 2))), float(sv[0]), vt[0]))
    return _SPECTRA[key][1]


def raw_signal(kind, pair, h):
    """One adapter's raw signal at probe vector h: "norm" ||o||, "entropy" 1 / (H(softmax(o)) + 1e-6) with
    o = s B A h (the paper), "arrow" |<v, h>| / ||h|| (v: the top right singular vector of B A)."""
    if kind == "arrow":
        v = lora_spectrum(pair)[2]
        return abs(v @ h) / np.linalg.norm(h)
    a, b, scale = pair
    o = scale * b @ (a @ h)
    if kind == "norm":
        return np.linalg.norm(o)
    p = np.exp(o - o.max())
    p /= p.sum()
    return 1.0 / (-np.sum(p * np.log(p + 1e-8)) + 1e-6)


def probe_vector(model: ReferenceModel, tokens, layer, position="last", bos=None, module="attn_q"):
    """The probe vector of block ``layer``: the residual entering it at the last token, or ("mean") the mean over
    the tokens after BOS of the module's input RMSNorm(h_t) * w (w: attn_norm for attn_*, else ffn_norm)."""
    h = model.block_input(tokens, layer)
    if position == "last":
        return h[-1]
    first = 1 if len(tokens) > 1 and tokens[0] == bos else 0
    w = model.w[f"blk.{layer}.{'attn_norm' if module.startswith('attn_') else 'ffn_norm'}.weight"]
    return model._rms(h[first:], w).mean(axis=0)


def calibrated_signals(adapters, probe_h, generic_h, layers, module="attn_q", signal="norm", calibration="none"):
    """(raw signals, calibrated signals) per adapter, NaN where an adapter adapts the module at none of ``layers``.

    probe_h[l]: the probe vector entering block l; generic_h[l]: (G, n_embd) the generic prompts' vectors there.
    Per block: zscore = (s - mean) / std over the generic prompts (population std), zscore_sq the same for s^2
    (mean and std of the generic prompts' s^2), spectral / frobenius =
    s / ||s B A||; then summed (none) or averaged (calibrated) over the blocks that adapt the module."""
    raw, calibrated = [], []
    for ad in adapters:
        r_parts, c_parts = [], []
        for layer in layers:
            pair = ad.pairs.get(f"blk.{layer}.{module}.weight")
            if pair is None:
                continue
            s = raw_signal(signal, pair, probe_h[layer])
            if calibration in ("zscore", "zscore_sq"):
                g = np.array([raw_signal(signal, pair, h) for h in generic_h[layer]])
                if calibration == "zscore_sq":  # the z-score of the squared signal
                    s2, g = s * s, g * g
                    c = (s2 - g.mean()) / g.std()
                else:
                    c = (s - g.mean()) / g.std()
            elif calibration in ("spectral", "frobenius"):
                frob, spec, _ = lora_spectrum(pair)
                c = s / (spec if calibration == "spectral" else frob)
            else:
                c = s
            r_parts.append(s)
            c_parts.append(c)
        if not r_parts:
            raw.append(np.nan)
            calibrated.append(np.nan)
            continue
        raw.append(np.sum(r_parts))
        calibrated.append(np.sum(c_parts) if calibration == "none" else np.mean(c_parts))
    return np.array(raw), np.array(calibrated)
