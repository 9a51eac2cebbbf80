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

}  // namespace

void check_matrix(const Model & model, const std::string & where, const std::string & weight, StagedMatrix & s) {
    LoraMatrix & m = s.m;
    if (!parse_weight_name(weight, m.layer, m.module) ||
        std::find(adaptable_modules().begin(), adaptable_modules().end(), m.module) == adaptable_modules().end()) {
        throw FormatError(where + ": '" + weight + "' is not a linear map this runtime adapts (blk.N.{attn_q, attn_k, "
                          "attn_v, attn_output, ffn_gate, ffn_up, ffn_down}.weight)");
    }
    const ggml_tensor * base = model.find_weight(weight);
    if (!base) {
        throw FormatError(where + ": adapts '" + weight + "', which the base model '" + model.path() + "' does not have");
    }
    // llama.cpp's checks: a is [n_in, r], b is [r, n_out], matching the base weight [n_in, n_out].
    if (s.a_ne[0] != base->ne[0] || s.b_ne[1] != base->ne[1] || s.a_ne[1] != s.b_ne[0] || s.a_ne[1] < 1) {
        throw FormatError(where + ": '" + weight + "' " + s.a_label + " has shape " + shape_string({s.a_ne[0], s.a_ne[1]}) +
                          " and " + s.b_label + " " + shape_string({s.b_ne[0], s.b_ne[1]}) + "; for the base weight " +
                          shape_string(base) + " expected lora_a [" + std::to_string(base->ne[0]) + ", r] and lora_b [r, " +
                          std::to_string(base->ne[1]) + "] (ggml order)");
    }
    m.weight_name = weight;
    m.base = base;
    m.rank = int(s.a_ne[1]);
}

void check_finite(const std::string & where, const std::string & label, ggml_type type, const std::vector<uint8_t> & bytes) {
    const int64_t n = int64_t(bytes.size() / ggml_type_size(type)) * ggml_blck_size(type);
    std::vector<float> values(static_cast<size_t>(n));
    if (type == GGML_TYPE_F32) {
        std::memcpy(values.data(), bytes.data(), bytes.size());
    } else {
        ggml_get_type_traits(type)->to_float(bytes.data(), values.data(), n);
    }
    for (float v : values) {
        if (!std::isfinite(v)) throw FormatError(where + ": tensor '" + label + "' contains NaN or Inf values");
    }
}

std::unique_ptr<Adapter> upload_adapter(const Model & model, const std::string & where, std::unique_ptr<Adapter> adapter,
                                        std::vector<StagedMatrix> & staged) {
    ggml_init_params params = {2 * staged.size() * ggml_tensor_overhead(), nullptr, true};
    adapter->ctx = ggml_init(params);
    for (StagedMatrix & s : staged) {
        s.m.a = ggml_new_tensor_2d(adapter->ctx, s.type_a, s.a_ne[0], s.a_ne[1]);
        s.m.b = ggml_new_tensor_2d(adapter->ctx, s.type_b, s.b_ne[0], s.b_ne[1]);
        ggml_set_name(s.m.a, (s.m.weight_name + ".lora_a").c_str());
        ggml_set_name(s.m.b, (s.m.weight_name + ".lora_b").c_str());
    }
    adapter->buffer = ggml_backend_alloc_ctx_tensors_from_buft(adapter->ctx, ggml_backend_dev_buffer_type(model.device()));
    if (!adapter->buffer) throw std::runtime_error("out of memory: cannot allocate " + where);
    adapter->bytes = ggml_backend_buffer_get_size(adapter->buffer);
    for (StagedMatrix & s : staged) {
        ggml_backend_tensor_set(s.m.a, s.a.data(), 0, ggml_nbytes(s.m.a));
        ggml_backend_tensor_set(s.m.b, s.b.data(), 0, ggml_nbytes(s.m.b));
        adapter->matrices.push_back(s.m);
    }
    return adapter;
}

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
    // alpha / rank scales B: a NaN or infinite alpha would turn every logit into NaN (and rank first in
    // LoGo's norm signal). The bound is F16's largest value, the type B takes in a mixture over F16 bases.
    adapter->alpha = float(file.get_float_in("adapter.lora.alpha", 0.0, -65504.0, 65504.0,
                                             "a finite number in [-65504, 65504] (0: no alpha, scale 1)"));

    // Pair up .lora_a / .lora_b by base weight name.
    std::map<std::string, std::pair<const ggml_tensor *, const ggml_tensor *>> pairs;
    for (const std::string & tensor_name : file.tensor_names()) {
        const bool is_a = tensor_name.size() > 7 && tensor_name.compare(tensor_name.size() - 7, 7, ".lora_a") == 0;
        const bool is_b = tensor_name.size() > 7 && tensor_name.compare(tensor_name.size() - 7, 7, ".lora_b") == 0;
        if (!is_a && !is_b) {
            throw FormatError(where + ": unexpected tensor '" + tensor_name + "' (LoRA tensors end in .lora_a or .lora_b)");
        }
        auto & pair = pairs[tensor_name.substr(0, tensor_name.size() - 7)];
        (is_a ? pair.first : pair.second) = file.find_tensor(tensor_name);
    }
    if (pairs.empty()) throw FormatError(where + " has no LoRA tensors");

    // Check every pair against the model before reading any data.
    std::vector<StagedMatrix> staged;
    for (const auto & [weight, pair] : pairs) {
        const auto [a, b] = pair;
        if (!a || !b) {
            throw FormatError(where + ": tensor '" + weight + (a ? ".lora_a" : ".lora_b") + "' has no matching '" + weight +
                              (a ? ".lora_b" : ".lora_a") + "'");
        }
        for (const ggml_tensor * t : {a, b}) {
            if (!allowed_type(t->type)) {
                throw FormatError(where + ": tensor '" + std::string(t->name) + "' has type " + ggml_type_name(t->type) +
                                  "; LoRA tensors must be f32, f16, bf16 or q8_0");
            }
            if (ggml_n_dims(t) > 2) {
                throw FormatError(where + ": tensor '" + std::string(t->name) + "' has shape " + shape_string(t) + ", expected 2 dimensions");
            }
        }
        StagedMatrix s;
        s.a_label = "lora_a";
        s.b_label = "lora_b";
        s.type_a = a->type;
        s.type_b = b->type;
        s.a_ne[0] = a->ne[0], s.a_ne[1] = a->ne[1];
        s.b_ne[0] = b->ne[0], s.b_ne[1] = b->ne[1];
        check_matrix(model, where, weight, s);
        s.m.scale = adapter->alpha != 0.0f ? adapter->alpha / float(s.m.rank) : 1.0f;
        staged.push_back(std::move(s));
    }

    // Read all data to the host and refuse non-finite values before allocating device memory.
    FILE * fp = std::fopen(path.c_str(), "rb");
    if (!fp) throw FileError("cannot open " + where + " for reading");
    std::unique_ptr<FILE, int (*)(FILE *)> closer(fp, &std::fclose);
    for (StagedMatrix & s : staged) {
        for (const char * suffix : {".lora_a", ".lora_b"}) {
            const std::string tensor_name = s.m.weight_name + suffix;
            const ggml_tensor * t = file.find_tensor(tensor_name);
            std::vector<uint8_t> & bytes = suffix[6] == 'a' ? s.a : s.b;
            bytes.resize(ggml_nbytes(t));
            if (std::fseek(fp, long(file.tensor_file_offset(tensor_name)), SEEK_SET) != 0 ||
                std::fread(bytes.data(), 1, bytes.size(), fp) != bytes.size()) {
                throw FormatError(where + ": could not read tensor '" + tensor_name + "'");
            }
            check_finite(where, tensor_name, t->type, bytes);
        }
    }
    return upload_adapter(model, where, std::move(adapter), staged);
}

}  // namespace logo::core
