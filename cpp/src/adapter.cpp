#include "adapter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "logo/errors.h"
#include "gguf_file.h"

namespace logo::core {

const std::vector<std::string> & adaptable_modules() {
    static const std::vector<std::string> names = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_gate", "ffn_up", "ffn_down"};
    return names;
}

Adapter::~Adapter() {
    if (buffer) ggml_backend_buffer_free(buffer);
    if (ctx) ggml_free(ctx);
}

const LoraMatrix * Adapter::find(int layer, const std::string & module) const {
    for (const auto & m : matrices) {
        if (m.layer == layer && m.module == module) return &m;
    }
    return nullptr;
}

const LoraMatrix * Adapter::find(const ggml_tensor * base) const {
    for (const auto & m : matrices) {
        if (m.base == base) return &m;
    }
    return nullptr;
}

std::vector<float> to_host_f32(const ggml_tensor * t) {
    const int64_t n = ggml_nelements(t);
    std::vector<float> out(static_cast<size_t>(n));
    const bool host = t->buffer && ggml_backend_buffer_is_host(t->buffer);
    std::vector<uint8_t> staging;
    const void * src = t->data;
    if (!host) {
        staging.resize(ggml_nbytes(t));
        ggml_backend_tensor_get(t, staging.data(), 0, staging.size());
        src = staging.data();
    }
    if (t->type == GGML_TYPE_F32) {
        std::memcpy(out.data(), src, sizeof(float) * out.size());
    } else {
        ggml_get_type_traits(t->type)->to_float(src, out.data(), n);
    }
    return out;
}

namespace {

// "blk.3.attn_q.weight" -> layer 3, module "attn_q"; false for names outside the blocks.
bool parse_weight_name(const std::string & weight, int & layer, std::string & module) {
    int consumed = 0;
    if (std::sscanf(weight.c_str(), "blk.%d.%n", &layer, &consumed) != 1 || consumed == 0) return false;
    const std::string rest = weight.substr(size_t(consumed));
    const std::string suffix = ".weight";
    if (rest.size() <= suffix.size() || rest.compare(rest.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
    module = rest.substr(0, rest.size() - suffix.size());
    return true;
}

bool allowed_type(ggml_type t) {
    return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16 || t == GGML_TYPE_Q8_0;
}

struct PendingMatrix {
    LoraMatrix m;
    const ggml_tensor * a_meta = nullptr;
    const ggml_tensor * b_meta = nullptr;
};

}  // namespace

std::unique_ptr<Adapter> load_adapter(const Model & model, const std::string & path, const std::string & name) {
    GgufFile file(path);
    const std::string where = "adapter '" + path + "'";
    const std::string general_type = file.get_string("general.type", "");
    if (general_type != "adapter") {
        throw FormatError(where + " is not a LoRA adapter: general.type is '" +
                          (general_type.empty() ? std::string("missing") : general_type) + "', expected 'adapter'");
    }
    const std::string adapter_type = file.get_string("adapter.type", "");
    if (adapter_type != "lora") {
        throw FormatError(where + ": adapter.type is '" + adapter_type + "', expected 'lora'");
    }
    const std::string arch = file.get_string("general.architecture", "");
    if (arch != model.hparams().arch_name) {
        throw FormatError(where + " is for architecture '" + arch + "' but the base model '" + model.path() +
                          "' is '" + model.hparams().arch_name + "'");
    }
    if (file.has_key("adapter.alora.invocation_tokens")) {
        throw FormatError(where + " is an activated LoRA (aLoRA), which this runtime does not serve");
    }

    auto adapter = std::make_unique<Adapter>();
    adapter->name = name;
    adapter->path = path;
    adapter->alpha = float(file.get_float("adapter.lora.alpha", 0.0));

    // Pair up .lora_a / .lora_b by base weight name and check each pair against the model.
    std::map<std::string, PendingMatrix> pending;
    for (const std::string & tensor_name : file.tensor_names()) {
        const bool is_a = tensor_name.size() > 7 && tensor_name.compare(tensor_name.size() - 7, 7, ".lora_a") == 0;
        const bool is_b = tensor_name.size() > 7 && tensor_name.compare(tensor_name.size() - 7, 7, ".lora_b") == 0;
        if (!is_a && !is_b) {
            throw FormatError(where + ": unexpected tensor '" + tensor_name + "' (LoRA tensors end in .lora_a or .lora_b)");
        }
        const std::string weight = tensor_name.substr(0, tensor_name.size() - 7);
        PendingMatrix & p = pending[weight];
        (is_a ? p.a_meta : p.b_meta) = file.find_tensor(tensor_name);
    }
    if (pending.empty()) throw FormatError(where + " has no LoRA tensors");

    for (auto & [weight, p] : pending) {
        if (!p.a_meta || !p.b_meta) {
            throw FormatError(where + ": tensor '" + weight + (p.a_meta ? ".lora_a" : ".lora_b") +
                              "' has no matching '" + weight + (p.a_meta ? ".lora_b" : ".lora_a") + "'");
        }
        if (!parse_weight_name(weight, p.m.layer, p.m.module) ||
            std::find(adaptable_modules().begin(), adaptable_modules().end(), p.m.module) == adaptable_modules().end()) {
            throw FormatError(where + ": '" + weight + "' is not a linear map this runtime adapts (blk.N.{attn_q, attn_k, "
                              "attn_v, attn_output, ffn_gate, ffn_up, ffn_down}.weight)");
        }
        const ggml_tensor * base = model.find_weight(weight);
        if (!base) {
            throw FormatError(where + ": adapts '" + weight + "', which the base model '" + model.path() + "' does not have");
        }
        const ggml_tensor * a = p.a_meta;
        const ggml_tensor * b = p.b_meta;
        for (const ggml_tensor * t : {a, b}) {
            if (!allowed_type(t->type)) {
                throw FormatError(where + ": tensor '" + std::string(t->name) + "' has type " + ggml_type_name(t->type) +
                                  "; LoRA tensors must be f32, f16, bf16 or q8_0");
            }
            if (ggml_n_dims(t) > 2) {
                throw FormatError(where + ": tensor '" + std::string(t->name) + "' has shape " + shape_string(t) + ", expected 2 dimensions");
            }
        }
        // llama.cpp's checks: a is [n_in, r], b is [r, n_out], matching the base weight [n_in, n_out].
        if (a->ne[0] != base->ne[0] || b->ne[1] != base->ne[1] || a->ne[1] != b->ne[0] || a->ne[1] < 1) {
            throw FormatError(where + ": '" + weight + "' lora_a has shape " + shape_string(a) + " and lora_b " +
                              shape_string(b) + "; for the base weight " + shape_string(base) + " expected lora_a [" +
                              std::to_string(base->ne[0]) + ", r] and lora_b [r, " + std::to_string(base->ne[1]) + "]");
        }
        p.m.weight_name = weight;
        p.m.base = base;
        p.m.rank = int(a->ne[1]);
        p.m.scale = adapter->alpha != 0.0f ? adapter->alpha / float(p.m.rank) : 1.0f;
    }

    // Read all data to the host and refuse non-finite values before allocating device memory.
    std::map<std::string, std::vector<uint8_t>> data;
    {
        FILE * fp = std::fopen(path.c_str(), "rb");
        if (!fp) throw FileError("cannot open " + where + " for reading");
        for (auto & [weight, p] : pending) {
            for (const ggml_tensor * t : {p.a_meta, p.b_meta}) {
                std::vector<uint8_t> & bytes = data[t->name];
                bytes.resize(ggml_nbytes(t));
                if (std::fseek(fp, long(file.tensor_file_offset(t->name)), SEEK_SET) != 0 ||
                    std::fread(bytes.data(), 1, bytes.size(), fp) != bytes.size()) {
                    std::fclose(fp);
                    throw FormatError(where + ": could not read tensor '" + std::string(t->name) + "'");
                }
                std::vector<float> values(size_t(ggml_nelements(t)));
                if (t->type == GGML_TYPE_F32) {
                    std::memcpy(values.data(), bytes.data(), bytes.size());
                } else {
                    ggml_get_type_traits(t->type)->to_float(bytes.data(), values.data(), ggml_nelements(t));
                }
                for (float v : values) {
                    if (!std::isfinite(v)) {
                        std::fclose(fp);
                        throw FormatError(where + ": tensor '" + std::string(t->name) + "' contains NaN or Inf values");
                    }
                }
            }
        }
        std::fclose(fp);
    }

    ggml_init_params params = {2 * pending.size() * ggml_tensor_overhead(), nullptr, true};
    adapter->ctx = ggml_init(params);
    for (auto & [weight, p] : pending) {
        p.m.a = ggml_dup_tensor(adapter->ctx, p.a_meta);
        p.m.b = ggml_dup_tensor(adapter->ctx, p.b_meta);
        ggml_set_name(p.m.a, p.a_meta->name);
        ggml_set_name(p.m.b, p.b_meta->name);
    }
    adapter->buffer = ggml_backend_alloc_ctx_tensors_from_buft(adapter->ctx, ggml_backend_dev_buffer_type(model.device()));
    if (!adapter->buffer) throw std::runtime_error("out of memory: cannot allocate " + where);
    adapter->bytes = ggml_backend_buffer_get_size(adapter->buffer);
    for (auto & [weight, p] : pending) {
        ggml_backend_tensor_set(p.m.a, data[p.a_meta->name].data(), 0, ggml_nbytes(p.m.a));
        ggml_backend_tensor_set(p.m.b, data[p.b_meta->name].data(), 0, ggml_nbytes(p.m.b));
        adapter->matrices.push_back(p.m);
    }
    return adapter;
}

}  // namespace logo::core
