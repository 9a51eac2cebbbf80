// LoRA adapters in llama.cpp's GGUF format, validated against a base model before anything is
// allocated, then kept resident in the model's device memory in their file's own types.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "model.h"

namespace logo::core {

// The names of the linear maps an adapter may adapt, in the order of a block.
const std::vector<std::string> & adaptable_modules();

struct LoraMatrix {
    std::string weight_name;         // e.g. "blk.3.attn_q.weight"
    int layer = -1;
    std::string module;              // e.g. "attn_q"
    const ggml_tensor * base = nullptr;
    ggml_tensor * a = nullptr;       // [n_in, rank]
    ggml_tensor * b = nullptr;       // [rank, n_out]
    int rank = 0;
    float scale = 1.0f;              // alpha / rank, or 1 when the file has no alpha (llama.cpp's rule)
};

struct Adapter {
    std::string name;
    std::string path;
    float alpha = 0.0f;
    std::vector<LoraMatrix> matrices;
    size_t bytes = 0;

    Adapter() = default;
    ~Adapter();
    Adapter(const Adapter &) = delete;
    Adapter & operator=(const Adapter &) = delete;

    const LoraMatrix * find(int layer, const std::string & module) const;
    const LoraMatrix * find(const ggml_tensor * base) const;

    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buffer = nullptr;
};

// Reads, validates and uploads one adapter. Throws FileError/FormatError naming the file and tensor;
// validation (architecture, names, shapes, types, finite values) happens before any allocation.
std::unique_ptr<Adapter> load_adapter(const Model & model, const std::string & path, const std::string & name);

// The adapter's matrix as F32 on the host, row-major in ggml order ([ne1][ne0]).
std::vector<float> to_host_f32(const ggml_tensor * t);

}  // namespace logo::core
