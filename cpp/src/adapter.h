// LoRA adapters in llama.cpp's GGUF format, validated against a base model before anything is
// allocated, then kept resident in the model's device memory in their file's own types.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "logo/types.h"
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

// One LoRA pair staged on the host between its checks and its upload: raw data in the type it keeps,
// shapes in ggml order (a [n_in, r], b [r, n_out]). Files and memory both come through here.
struct StagedMatrix {
    LoraMatrix m;                      // weight_name, layer, module, base, rank filled by check_matrix; scale by the caller
    std::string a_label, b_label;      // A's and B's names as the source calls them, for messages
    ggml_type type_a = GGML_TYPE_F32, type_b = GGML_TYPE_F32;
    int64_t a_ne[2] = {0, 0}, b_ne[2] = {0, 0};
    std::vector<uint8_t> a, b;
};

// llama.cpp's checks of a pair against the base: the weight is an adaptable linear map the model has,
// a is [n_in, r] and b is [r, n_out] of it. Throws FormatError naming `where` and the weight.
void check_matrix(const Model & model, const std::string & where, const std::string & weight, StagedMatrix & staged);
// Throws FormatError when `bytes` (of `type`) hold a NaN or Inf.
void check_finite(const std::string & where, const std::string & label, ggml_type type, const std::vector<uint8_t> & bytes);
// Allocates the adapter's tensors on the model's device and copies the staged data there.
std::unique_ptr<Adapter> upload_adapter(const Model & model, const std::string & where, std::unique_ptr<Adapter> adapter,
                                        std::vector<StagedMatrix> & staged);

// Reads, validates and uploads one adapter. Throws FileError/FormatError naming the file and tensor;
// validation (architecture, names, shapes, types, finite values) happens before any allocation.
std::unique_ptr<Adapter> load_adapter(const Model & model, const std::string & path, const std::string & name);

// An adapter from memory (logo::AdapterData: a PEFT directory read by Python, say), checked as files are
// (check_matrix, check_finite after conversion to the kept type) before anything is allocated.
std::unique_ptr<Adapter> adapter_from_memory(const Model & model, const AdapterData & data);

// The adapter's matrix as F32 on the host, row-major in ggml order ([ne1][ne0]).
std::vector<float> to_host_f32(const ggml_tensor * t);

}  // namespace logo::core
