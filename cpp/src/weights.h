// The weight tensors of a Llama-family model: one member per tensor, grouped per layer.
#pragma once

#include <vector>

#include "ggml.h"

namespace logo::core {

struct LayerWeights {
    ggml_tensor * attn_norm = nullptr;  // [n_embd]
    ggml_tensor * wq = nullptr;         // [n_embd, n_embd_q]
    ggml_tensor * wk = nullptr;         // [n_embd, n_embd_k_gqa]
    ggml_tensor * wv = nullptr;         // [n_embd, n_embd_v_gqa]
    ggml_tensor * wo = nullptr;         // [n_embd_q, n_embd]
    ggml_tensor * bq = nullptr;         // qwen2 biases, else null
    ggml_tensor * bk = nullptr;
    ggml_tensor * bv = nullptr;
    ggml_tensor * q_norm = nullptr;     // qwen3 per-head RMSNorm weights [head_dim], else null
    ggml_tensor * k_norm = nullptr;
    ggml_tensor * ffn_norm = nullptr;   // [n_embd]
    ggml_tensor * ffn_gate = nullptr;   // [n_embd, n_ff]
    ggml_tensor * ffn_up = nullptr;     // [n_embd, n_ff]
    ggml_tensor * ffn_down = nullptr;   // [n_ff, n_embd]
};

struct ModelWeights {
    ggml_tensor * tok_embd = nullptr;     // [n_embd, n_vocab]
    ggml_tensor * output_norm = nullptr;  // [n_embd]
    ggml_tensor * output = nullptr;       // [n_embd, n_vocab]; tok_embd when tied
    ggml_tensor * rope_freqs = nullptr;   // [n_rot/2] llama 3 frequency factors, or null
    std::vector<LayerWeights> layers;
};

}  // namespace logo::core
