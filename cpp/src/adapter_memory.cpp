// Adapters handed over in memory (logo::AdapterData) rather than read from a GGUF file: the Python
// package reads PEFT directories with `safetensors` and passes numpy arrays here. They go through the
// same checks as files (adapter.cpp) and are kept in the type the caller asks for.
#include <cmath>
#include <cstring>
#include <set>
#include <stdexcept>

#include "adapter.h"
#include "gguf_file.h"
#include "logo/errors.h"

namespace logo::core {

namespace {

ggml_type kept_type(const std::string & where, const LoraMatrixData & d) {
    if (d.type == "f32") return GGML_TYPE_F32;
    if (d.type == "f16") return GGML_TYPE_F16;
    if (d.type == "bf16") return GGML_TYPE_BF16;
    throw std::invalid_argument(where + ": '" + d.weight + "' asks for type '" + d.type + "'; use f32, f16 or bf16");
}

// Row-major float32 [rows][cols] -> bytes of `type` (the same memory layout as ggml's [cols, rows]).
std::vector<uint8_t> encode(const float * values, int64_t n, ggml_type type) {
    std::vector<uint8_t> bytes(size_t(n) * ggml_type_size(type));
    if (type == GGML_TYPE_F32) {
        std::memcpy(bytes.data(), values, bytes.size());
    } else if (type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(values, reinterpret_cast<ggml_fp16_t *>(bytes.data()), n);
    } else {
        ggml_fp32_to_bf16_row(values, reinterpret_cast<ggml_bf16_t *>(bytes.data()), n);
    }
    return bytes;
}

}  // namespace

std::unique_ptr<Adapter> adapter_from_memory(const Model & model, const AdapterData & data) {
    const std::string where = "adapter '" + (data.source.empty() ? data.name : data.source) + "'";
    if (data.matrices.empty()) throw FormatError(where + " has no LoRA matrices");
    auto adapter = std::make_unique<Adapter>();
    adapter->name = data.name;
    adapter->path = data.source;
    adapter->alpha = data.alpha;

    std::set<std::string> seen;
    std::vector<StagedMatrix> staged;
    for (const LoraMatrixData & d : data.matrices) {
        if (!seen.insert(d.weight).second) throw FormatError(where + ": '" + d.weight + "' is adapted twice");
        if (!d.a || !d.b) throw std::invalid_argument(where + ": '" + d.weight + "' has no data for A or B");
        if (d.rank < 1 || d.n_in < 1 || d.n_out < 1) {
            throw std::invalid_argument(where + ": '" + d.weight + "' has rank " + std::to_string(d.rank) + ", n_in " +
                                        std::to_string(d.n_in) + ", n_out " + std::to_string(d.n_out) + "; each must be >= 1");
        }
        if (!std::isfinite(d.scale)) {
            throw FormatError(where + ": '" + d.weight + "' has a non-finite scale (" + std::to_string(d.scale) + ")");
        }
        StagedMatrix s;
        s.a_label = d.a_name.empty() ? d.weight + ".lora_a" : d.a_name;
        s.b_label = d.b_name.empty() ? d.weight + ".lora_b" : d.b_name;
        s.type_a = s.type_b = kept_type(where, d);
        s.a_ne[0] = d.n_in, s.a_ne[1] = d.rank;   // lora_A [rank][n_in] row-major
        s.b_ne[0] = d.rank, s.b_ne[1] = d.n_out;  // lora_B [n_out][rank] row-major
        check_matrix(model, where, d.weight, s);
        s.m.scale = d.scale;
        staged.push_back(std::move(s));
    }
    // Only now touch the data: convert to the kept type, then check it there (an F16 overflow is an Inf).
    for (size_t i = 0; i < staged.size(); ++i) {
        const LoraMatrixData & d = data.matrices[i];
        StagedMatrix & s = staged[i];
        s.a = encode(d.a, d.rank * d.n_in, s.type_a);
        s.b = encode(d.b, d.n_out * d.rank, s.type_b);
        check_finite(where, s.a_label, s.type_a, s.a);
        check_finite(where, s.b_label, s.type_b, s.b);
    }
    return upload_adapter(model, where, std::move(adapter), staged);
}

}  // namespace logo::core
