#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "backend.h"
#include "calibration.h"
#include "logo/errors.h"
#include "logo/types.h"
#include "gguf_file.h"

namespace logo::core {

namespace {

// One expected tensor: where it goes, the shape it must have, whether the file may omit it.
struct TensorSpec {
    std::string name;
    std::vector<int64_t> ne;
    bool required;
    bool is_matmul_weight;  // candidates for the CPU's repacked layouts
    ggml_tensor ** slot;
};

std::vector<TensorSpec> expected_tensors(const ModelHparams & hp, ModelWeights & w) {
    std::vector<TensorSpec> specs;
    const int64_t E = hp.n_embd, V = hp.n_vocab, F = hp.n_ff;
    specs.push_back({"token_embd.weight", {E, V}, true, false, &w.tok_embd});
    specs.push_back({"output_norm.weight", {E}, true, false, &w.output_norm});
    specs.push_back({"output.weight", {E, V}, false, true, &w.output});
    specs.push_back({"rope_freqs.weight", {hp.n_rot / 2}, false, false, &w.rope_freqs});
    w.layers.resize(size_t(hp.n_layer));
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        LayerWeights & L = w.layers[size_t(il)];
        const std::string p = "blk." + std::to_string(il) + ".";
        specs.push_back({p + "attn_norm.weight", {E}, true, false, &L.attn_norm});
        specs.push_back({p + "attn_q.weight", {E, hp.n_embd_q()}, true, true, &L.wq});
        specs.push_back({p + "attn_k.weight", {E, hp.n_embd_k_gqa()}, true, true, &L.wk});
        specs.push_back({p + "attn_v.weight", {E, hp.n_embd_v_gqa()}, true, true, &L.wv});
        specs.push_back({p + "attn_output.weight", {hp.n_embd_q(), E}, true, true, &L.wo});
        if (hp.has_qkv_bias) {
            specs.push_back({p + "attn_q.bias", {hp.n_embd_q()}, true, false, &L.bq});
            specs.push_back({p + "attn_k.bias", {hp.n_embd_k_gqa()}, true, false, &L.bk});
            specs.push_back({p + "attn_v.bias", {hp.n_embd_v_gqa()}, true, false, &L.bv});
        }
        if (hp.has_qk_norm) {
            specs.push_back({p + "attn_q_norm.weight", {hp.head_dim_k}, true, false, &L.q_norm});
            specs.push_back({p + "attn_k_norm.weight", {hp.head_dim_k}, true, false, &L.k_norm});
        }
        specs.push_back({p + "ffn_norm.weight", {E}, true, false, &L.ffn_norm});
        specs.push_back({p + "ffn_gate.weight", {E, F}, true, true, &L.ffn_gate});
        specs.push_back({p + "ffn_up.weight", {E, F}, true, true, &L.ffn_up});
        specs.push_back({p + "ffn_down.weight", {F, E}, true, true, &L.ffn_down});
    }
    return specs;
}

void check_tensor(const GgufFile & f, const TensorSpec & spec, const ggml_tensor * t) {
    bool same = true;
    for (int d = 0; d < GGML_MAX_DIMS; ++d) {
        const int64_t want = d < int(spec.ne.size()) ? spec.ne[size_t(d)] : 1;
        if (t->ne[d] != want) same = false;
    }
    if (!same) {
        throw FormatError("'" + f.path + "': tensor '" + spec.name + "' has shape " + shape_string(t) +
                          ", expected " + shape_string(spec.ne));
    }
    const size_t row_size = ggml_row_size(t->type, t->ne[0]);
    if (ggml_blck_size(t->type) <= 0 || row_size == 0 || t->ne[0] % ggml_blck_size(t->type) != 0) {
        throw FormatError("'" + f.path + "': tensor '" + spec.name + "' has type " + ggml_type_name(t->type) +
                          " which cannot hold rows of " + std::to_string(t->ne[0]) + " elements");
    }
    // Norms, biases and rope factors are added or multiplied element-wise, which ggml does in F32.
    if (!spec.is_matmul_weight && spec.name != "token_embd.weight" && t->type != GGML_TYPE_F32) {
        throw FormatError("'" + f.path + "': tensor '" + spec.name + "' has type " + ggml_type_name(t->type) +
                          ", expected f32");
    }
}

// llama 3's rope frequency factors divide the rotation frequencies, so each must be finite and positive
// (a NaN here would turn every logit into NaN). The tensor is small: read it straight from the file.
void check_rope_factors(const GgufFile & f) {
    const ggml_tensor * t = f.find_tensor("rope_freqs.weight");
    if (!t) return;  // (its type, F32, and shape were checked with the other tensors)
    std::vector<float> factors(size_t(ggml_nelements(t)));
    FILE * fp = std::fopen(f.path.c_str(), "rb");
    if (!fp) throw FileError("cannot open '" + f.path + "' for reading");
    const bool read = std::fseek(fp, long(f.tensor_file_offset("rope_freqs.weight")), SEEK_SET) == 0 &&
                      std::fread(factors.data(), sizeof(float), factors.size(), fp) == factors.size();
    std::fclose(fp);
    if (!read) throw FormatError("'" + f.path + "': could not read the data of tensor 'rope_freqs.weight'");
    for (size_t i = 0; i < factors.size(); ++i) {
        if (!(std::isfinite(factors[i]) && factors[i] > 0)) {
            throw FormatError("'" + f.path + "': tensor 'rope_freqs.weight' holds " + std::to_string(factors[i]) +
                              " at index " + std::to_string(i) + "; rope frequency factors must be finite and > 0");
        }
    }
}

// Whether the CPU backend's extra buffer type (repacked, interleaved quant layouts) can serve this weight
// in a matrix multiplication; llama.cpp makes the same query, so both get the same fast kernels.
bool extra_buft_supports(ggml_backend_dev_t cpu, ggml_backend_buffer_type_t buft, const ggml_tensor * w) {
    ggml_init_params params = {3 * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * weight = ggml_new_tensor_2d(ctx, w->type, w->ne[0], w->ne[1]);
    ggml_tensor * input = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], 512);
    ggml_tensor * op = ggml_mul_mat(ctx, weight, input);
    ggml_backend_buffer_t probe = ggml_backend_buft_alloc_buffer(buft, 0);
    weight->buffer = probe;
    const bool ok = probe && ggml_backend_dev_supports_op(cpu, op);
    if (probe) ggml_backend_buffer_free(probe);
    ggml_free(ctx);
    return ok;
}

// Whether `dev` can run the op a weight of this type and shape takes part in (matmul, or the embedding
// lookup); a type ggml stores but cannot compute with (f64, i32, ...) must be refused before ggml asserts.
bool device_can_use(ggml_backend_dev_t dev, const ggml_tensor * w, bool lookup) {
    ggml_init_params params = {4 * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * weight = ggml_new_tensor_2d(ctx, w->type, w->ne[0], w->ne[1]);
    ggml_tensor * op = nullptr;
    if (lookup) {
        op = ggml_get_rows(ctx, weight, ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 4));
    } else {
        op = ggml_mul_mat(ctx, weight, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], 4));
    }
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    ggml_free(ctx);
    return ok;
}

std::vector<ggml_backend_buffer_type_t> cpu_extra_bufts(ggml_backend_dev_t cpu) {
    std::vector<ggml_backend_buffer_type_t> out;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(
        reg, "ggml_backend_dev_get_extra_bufts");
    if (!get_extra) return out;
    for (ggml_backend_buffer_type_t * b = get_extra(cpu); b && *b; ++b) {
        // ggml's AMX matmul segfaults on some Sapphire Rapids machines (this project's among them, and
        // llama.cpp itself there: ggml-org/llama.cpp#20824, unfixed); the repacked AVX kernels are safe.
        if (std::string(ggml_backend_buft_name(*b)) == "AMX") continue;
        out.push_back(*b);
    }
    return out;
}

}  // namespace

static_assert(kMaxThreads == GGML_MAX_N_THREADS, "logo::kMaxThreads follows ggml's thread limit");

Model::Model(const std::string & path, const ModelOptions & options)
    : path_(path), calibration_cache_(std::make_unique<CalibrationCache>()) {
    if (options.n_threads < 0) throw std::invalid_argument("n_threads must be >= 0 (0 means one per core)");
    if (options.n_threads > kMaxThreads) {
        throw std::invalid_argument("n_threads must be at most " + std::to_string(kMaxThreads) +
                                    " (ggml's thread limit), got " + std::to_string(options.n_threads));
    }
    GgufFile file(path);
    hparams_ = read_hparams(file);
    std::vector<TensorSpec> specs = expected_tensors(hparams_, weights_);

    // Validate everything before allocating anything.
    for (const auto & spec : specs) {
        const ggml_tensor * t = file.find_tensor(spec.name);
        if (!t) {
            if (spec.required) {
                throw FormatError("'" + path + "': missing tensor '" + spec.name + "' (expected shape " +
                                  shape_string(spec.ne) + ")");
            }
            continue;
        }
        check_tensor(file, spec, t);
    }
    check_rope_factors(file);
    device_ = select_device(options.device);
    n_threads_ = options.n_threads > 0 ? options.n_threads : default_thread_count();
    repack_ = options.repack;
    for (const auto & spec : specs) {
        const ggml_tensor * t = file.find_tensor(spec.name);
        if (!t) continue;
        const bool lookup = spec.name == "token_embd.weight";
        ggml_backend_dev_t where = lookup && !is_cpu_device(device_) ? cpu_device() : device_;
        bool usable = device_can_use(where, t, lookup);
        if (lookup && !file.find_tensor("output.weight")) usable = usable && device_can_use(device_, t, false);  // tied head
        if (!usable) {
            throw FormatError("'" + path + "': tensor '" + spec.name + "' has type " + ggml_type_name(t->type) +
                              ", which " + ggml_backend_dev_name(where) + " cannot compute with");
        }
    }

    try {
        vocab_ = std::make_unique<Vocab>(file);
        if (vocab_->n_tokens() != hparams_.n_vocab) {
            throw FormatError("'" + path + "': the tokenizer has " + std::to_string(vocab_->n_tokens()) +
                              " tokens but token_embd.weight has " + std::to_string(hparams_.n_vocab) + " rows");
        }

        const size_t n_specs = specs.size() + 1;  // + a possible second copy of a tied output head
        ggml_init_params params = {n_specs * ggml_tensor_overhead(), nullptr, true};
        ctx_ = ggml_init(params);

        ggml_backend_dev_t cpu = cpu_device();
        const bool on_cpu = is_cpu_device(device_);
        const std::vector<ggml_backend_buffer_type_t> extras = on_cpu && options.repack ? cpu_extra_bufts(cpu)
                                                                      : std::vector<ggml_backend_buffer_type_t>{};
        const bool map_weights = on_cpu && options.use_mmap;

        // Each tensor goes to a buffer type: a repacked CPU layout, the device's own memory, or the file mapping.
        std::map<ggml_backend_buffer_type_t, std::vector<std::pair<ggml_tensor *, std::string>>> to_allocate;
        std::vector<std::pair<ggml_tensor *, std::string>> to_map;
        auto place = [&](ggml_tensor * t, const std::string & file_name, bool matmul, bool input_only) {
            for (auto buft : extras) {
                if (matmul && extra_buft_supports(cpu, buft, t)) {
                    to_allocate[buft].push_back({t, file_name});
                    return;
                }
            }
            if (map_weights) {
                to_map.push_back({t, file_name});
            } else if (input_only) {
                // The embedding lookup stays in host memory, as llama.cpp keeps its input layer on the CPU.
                to_allocate[ggml_backend_dev_buffer_type(cpu)].push_back({t, file_name});
            } else {
                to_allocate[ggml_backend_dev_buffer_type(device_)].push_back({t, file_name});
            }
        };
        for (const auto & spec : specs) {
            const ggml_tensor * src = file.find_tensor(spec.name);
            if (!src) continue;
            ggml_tensor * t = ggml_dup_tensor(ctx_, src);
            ggml_set_name(t, spec.name.c_str());
            *spec.slot = t;
            by_name_[spec.name] = t;
            place(t, spec.name, spec.is_matmul_weight, spec.name == "token_embd.weight" && !on_cpu);
        }
        if (!weights_.output) {
            // Tied head: on the CPU the embedding serves both; on a GPU the head gets its own device copy.
            if (on_cpu) {
                weights_.output = weights_.tok_embd;
            } else {
                weights_.output = ggml_dup_tensor(ctx_, weights_.tok_embd);
                ggml_set_name(weights_.output, "output.weight (tied)");
                place(weights_.output, "token_embd.weight", true, false);
            }
        }

        if (!to_map.empty()) {
            int fd = ::open(path.c_str(), O_RDONLY);
            if (fd < 0) throw FileError("cannot open '" + path + "' for reading");
            mapping_size_ = file.file_size;
            mapping_ = ::mmap(nullptr, mapping_size_, PROT_READ, MAP_SHARED, fd, 0);
            ::close(fd);
            if (mapping_ == MAP_FAILED) {
                mapping_ = nullptr;
                throw FileError("cannot map '" + path + "' into memory");
            }
            size_t max_tensor = 0;
            for (auto & [t, name] : to_map) max_tensor = std::max(max_tensor, ggml_nbytes(t));
            ggml_backend_buffer_t buf = ggml_backend_dev_buffer_from_host_ptr(cpu, mapping_, mapping_size_, max_tensor);
            if (!buf) throw std::runtime_error("cannot wrap the mapping of '" + path + "' in a CPU buffer");
            buffers_.push_back(buf);
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            for (auto & [t, name] : to_map) {
                char * addr = static_cast<char *>(mapping_) + file.tensor_file_offset(name);
                if (ggml_backend_tensor_alloc(buf, t, addr) != GGML_STATUS_SUCCESS) {
                    throw std::runtime_error("cannot place tensor '" + name + "' in the file mapping");
                }
            }
        }

        FILE * fp = to_allocate.empty() ? nullptr : std::fopen(path.c_str(), "rb");
        if (!to_allocate.empty() && !fp) throw FileError("cannot open '" + path + "' for reading");
        std::vector<uint8_t> staging;
        for (auto & [buft, tensors] : to_allocate) {
            size_t total = 0;
            for (auto & [t, name] : tensors) {
                total += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), ggml_backend_buft_get_alignment(buft));
            }
            ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, total);
            if (!buf) {
                std::fclose(fp);
                throw std::runtime_error("out of memory: cannot allocate " + std::to_string(total >> 20) +
                                         " MiB of weights on " + ggml_backend_buft_name(buft));
            }
            buffers_.push_back(buf);
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            char * base = static_cast<char *>(ggml_backend_buffer_get_base(buf));
            size_t offset = 0;
            for (auto & [t, name] : tensors) {
                ggml_backend_tensor_alloc(buf, t, base + offset);
                offset += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), ggml_backend_buft_get_alignment(buft));
                staging.resize(ggml_nbytes(t));
                const size_t at = file.tensor_file_offset(name);
                if (std::fseek(fp, long(at), SEEK_SET) != 0 || std::fread(staging.data(), 1, staging.size(), fp) != staging.size()) {
                    std::fclose(fp);
                    throw FormatError("'" + path + "': could not read the data of tensor '" + name + "'");
                }
                ggml_backend_tensor_set(t, staging.data(), 0, staging.size());
            }
        }
        if (fp) std::fclose(fp);
    } catch (...) {
        release();
        throw;
    }
}

ggml_backend_buffer_type_t Model::repacked_type(const ggml_tensor * w) const {
    if (!w->buffer) return nullptr;
    const ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(w->buffer);
    for (ggml_backend_buffer_type_t extra : cpu_extra_bufts(cpu_device())) {
        if (extra == buft) return buft;
    }
    return nullptr;
}

std::vector<uint8_t> Model::plain_bytes(const ggml_tensor * w) const {
    const std::string name = ggml_get_name(w);
    const GgufFile file(path_);
    const ggml_tensor * stored = file.find_tensor(name);
    if (!stored || stored->type != w->type || ggml_nbytes(stored) != ggml_nbytes(w)) {
        throw FormatError("'" + path_ + "': tensor '" + name + "' changed since the model was loaded");
    }
    std::vector<uint8_t> data(ggml_nbytes(w));
    FILE * fp = std::fopen(path_.c_str(), "rb");
    if (!fp) throw FileError("cannot open '" + path_ + "' for reading");
    const bool ok = std::fseek(fp, long(file.tensor_file_offset(name)), SEEK_SET) == 0 &&
                    std::fread(data.data(), 1, data.size(), fp) == data.size();
    std::fclose(fp);
    if (!ok) throw FormatError("'" + path_ + "': could not read the data of tensor '" + name + "'");
    return data;
}

void Model::release() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    buffers_.clear();
    if (ctx_) ggml_free(ctx_);
    ctx_ = nullptr;
    if (mapping_) ::munmap(mapping_, mapping_size_);
    mapping_ = nullptr;
}

Model::~Model() { release(); }

size_t Model::weight_bytes() const {
    size_t total = 0;
    for (auto b : buffers_) total += ggml_backend_buffer_get_size(b);
    return total;
}

ggml_tensor * Model::find_weight(const std::string & name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

}  // namespace logo::core
