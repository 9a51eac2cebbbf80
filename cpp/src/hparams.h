// Hyperparameters of a Llama-family model, read from the GGUF keys with llama.cpp's defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace logo::core {

struct GgufFile;

enum class Arch { llama, qwen2, qwen3 };

struct ModelHparams {
    Arch arch = Arch::llama;
    std::string arch_name;  // as written in general.architecture
    int64_t n_vocab = 0;
    int64_t n_ctx_train = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_ff = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim_k = 0;  // per-head size of q and k
    int64_t head_dim_v = 0;
    int64_t n_rot = 0;       // rotated dimensions per head
    float rms_eps = 1e-5f;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
    int rope_mode = 0;             // GGML_ROPE_TYPE_NORMAL for llama, NEOX for qwen

    // Per-architecture features, so one graph builder serves the whole family.
    bool has_qkv_bias = false;  // qwen2
    bool has_qk_norm = false;   // qwen3

    int64_t n_embd_q() const { return head_dim_k * n_head; }
    int64_t n_embd_k_gqa() const { return head_dim_k * n_head_kv; }
    int64_t n_embd_v_gqa() const { return head_dim_v * n_head_kv; }
};

// Names accepted in general.architecture, for error messages.
const std::vector<std::string> & supported_architectures();

// Throws FormatError naming the file and key on anything missing or out of range.
ModelHparams read_hparams(const GgufFile & file);

}  // namespace logo::core
