#include "adapter_pool.h"

#include <algorithm>
#include <stdexcept>

#include "lora_spectrum.h"

namespace logo::core {

ProbeBank::~ProbeBank() {
    if (buffer) ggml_backend_buffer_free(buffer);
    if (ctx) ggml_free(ctx);
}

AdapterPool::AdapterPool(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

static std::string file_stem(const std::string & path) {
    const size_t slash = path.find_last_of("/\\");
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    const size_t dot = base.rfind('.');
    return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

std::vector<std::string> AdapterPool::add(const std::vector<std::string> & paths, const std::vector<std::string> & names) {
    if (!names.empty() && names.size() != paths.size()) throw std::invalid_argument("give one name per adapter path, or none");
    std::vector<std::string> chosen;
    for (size_t i = 0; i < paths.size(); ++i) {
        std::string name = names.empty() || names[i].empty() ? file_stem(paths[i]) : names[i];
        if (index_of(name) >= 0 || std::find(chosen.begin(), chosen.end(), name) != chosen.end()) {
            throw std::invalid_argument("duplicate adapter name '" + name + "' (from '" + paths[i] +
                                        "'); adapter names in a pool must be unique");
        }
        chosen.push_back(name);
    }
    // Load everything first; only then change the pool, so a failure leaves it as it was.
    std::vector<std::unique_ptr<Adapter>> loaded;
    for (size_t i = 0; i < paths.size(); ++i) loaded.push_back(load_adapter(*model_, paths[i], chosen[i]));
    insert(std::move(loaded));
    return chosen;
}

std::vector<std::string> AdapterPool::add_tensors(const std::vector<AdapterData> & adapters) {
    std::vector<std::string> chosen;
    for (const AdapterData & a : adapters) {
        if (a.name.empty()) throw std::invalid_argument("an adapter from memory needs a name (from '" + a.source + "')");
        if (index_of(a.name) >= 0 || std::find(chosen.begin(), chosen.end(), a.name) != chosen.end()) {
            throw std::invalid_argument("duplicate adapter name '" + a.name + "' (from '" + a.source +
                                        "'); adapter names in a pool must be unique");
        }
        chosen.push_back(a.name);
    }
    std::vector<std::unique_ptr<Adapter>> loaded;
    for (const AdapterData & a : adapters) loaded.push_back(adapter_from_memory(*model_, a));
    insert(std::move(loaded));
    return chosen;
}

// The one place adapters enter the pool, from files or memory, after all of them loaded.
void AdapterPool::insert(std::vector<std::unique_ptr<Adapter>> loaded) {
    for (auto & a : loaded) adapters_.push_back(std::move(a));
    invalidate();
}

void AdapterPool::remove(const std::string & name) {
    const int i = index_of(name);
    if (i < 0) throw std::invalid_argument("no adapter named '" + name + "' in the pool");
    adapters_.erase(adapters_.begin() + i);
    invalidate();
}

std::vector<std::string> AdapterPool::names() const {
    std::vector<std::string> out;
    for (const auto & a : adapters_) out.push_back(a->name);
    return out;
}

int AdapterPool::index_of(const std::string & name) const {
    for (size_t i = 0; i < adapters_.size(); ++i) {
        if (adapters_[i]->name == name) return int(i);
    }
    return -1;
}

size_t AdapterPool::bytes() const {
    size_t total = 0;
    for (const auto & a : adapters_) total += a->bytes;
    return total;
}

void AdapterPool::invalidate() {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    banks_.clear();
    all_.reset();
}

const ProbeBank & AdapterPool::probe_bank(int layer, const std::string & module) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto & slot = banks_[{layer, module}];
    if (slot) return *slot;
    auto bank = std::make_unique<ProbeBank>();
    bank->layer = layer;
    bank->module = module;
    const ggml_tensor * base = nullptr;
    for (size_t i = 0; i < adapters_.size(); ++i) {
        const LoraMatrix * m = adapters_[i]->find(layer, module);
        if (!m) continue;
        bank->adapters.push_back(int(i));
        bank->r_max = std::max(bank->r_max, m->rank);
        base = m->base;
    }
    if (!bank->adapters.empty()) {
        const int64_t n = int64_t(bank->adapters.size()), n_in = base->ne[0], n_out = base->ne[1], R = bank->r_max;
        ggml_init_params params = {4 * ggml_tensor_overhead(), nullptr, true};
        bank->ctx = ggml_init(params);
        bank->a_all = ggml_new_tensor_2d(bank->ctx, GGML_TYPE_F32, n_in, R * n);
        bank->b_all = ggml_new_tensor_3d(bank->ctx, GGML_TYPE_F32, R, n_out, n);
        bank->ra_all = ggml_new_tensor_2d(bank->ctx, GGML_TYPE_F32, n_in, R * n);
        bank->prototypes = ggml_new_tensor_2d(bank->ctx, GGML_TYPE_F32, n_in, n);
        bank->buffer = ggml_backend_alloc_ctx_tensors_from_buft(bank->ctx, ggml_backend_dev_buffer_type(model_->device()));
        if (!bank->buffer) throw std::runtime_error("out of memory: cannot allocate the probe stacks");
        std::vector<float> a(size_t(n_in * R * n), 0.0f), b(size_t(R * n_out * n), 0.0f), v(size_t(n_in * n));
        std::vector<float> ra(a.size(), 0.0f);
        for (int64_t j = 0; j < n; ++j) {
            const LoraMatrix * m = adapters_[size_t(bank->adapters[size_t(j)])]->find(layer, module);
            const std::vector<float> a_i = to_host_f32(m->a);  // [r][n_in]
            const std::vector<float> b_i = to_host_f32(m->b);  // [n_out][r]
            std::copy(a_i.begin(), a_i.end(), a.begin() + j * R * n_in);
            const std::vector<float> ra_i = lora_norm_factor(a_i, b_i, m->rank, n_in, n_out, m->scale);
            std::copy(ra_i.begin(), ra_i.end(), ra.begin() + j * R * n_in);
            float * b_j = b.data() + j * R * n_out;
            for (int64_t o = 0; o < n_out; ++o) {
                for (int64_t r = 0; r < m->rank; ++r) b_j[o * R + r] = m->scale * b_i[size_t(o * m->rank + r)];
            }
            // Data-free facts of s B A (from r x r Grams: cheap even for hundreds of adapters).
            LoraSpectrum spectrum = lora_spectrum(a_i, b_i, m->rank, n_in, n_out, m->scale);
            bank->frobenius.push_back(spectrum.frobenius);
            bank->spectral.push_back(spectrum.spectral);
            bank->content_hash.push_back(matrix_content_hash(*m, a_i, b_i));
            std::copy(spectrum.top_right.begin(), spectrum.top_right.end(), v.begin() + j * n_in);
            bank->prototype_host.push_back(std::move(spectrum.top_right));
        }
        ggml_backend_tensor_set(bank->a_all, a.data(), 0, ggml_nbytes(bank->a_all));
        ggml_backend_tensor_set(bank->b_all, b.data(), 0, ggml_nbytes(bank->b_all));
        ggml_backend_tensor_set(bank->ra_all, ra.data(), 0, ggml_nbytes(bank->ra_all));
        ggml_backend_tensor_set(bank->prototypes, v.data(), 0, ggml_nbytes(bank->prototypes));
    }
    slot = std::move(bank);
    return *slot;
}

const std::vector<SignalStats> & AdapterPool::bank_stats(const ProbeBank & bank, RawSignal kind, ProbePosition position,
                                                        bool squared) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    ProbeBank & owned = *banks_.at({bank.layer, bank.module});  // the same bank, as this pool owns it
    const auto key = std::make_tuple(kind, position, squared);
    auto it = owned.stats.find(key);
    if (it != owned.stats.end()) return it->second;
    std::vector<SignalStats> out;
    for (size_t j = 0; j < bank.adapters.size(); ++j) {
        const LoraMatrix * m = adapters_[size_t(bank.adapters[j])]->find(bank.layer, bank.module);
        out.push_back(model_->calibration_cache().stats(model_, *m, bank.content_hash[j], kind, position,
                                                        bank.prototype_host[j], squared));
    }
    return owned.stats[key] = std::move(out);
}

const Mixture & AdapterPool::all_adapters() {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (!all_) {
        Selection everyone;
        for (const auto & a : adapters_) everyone.push_back({a.get(), 1.0f});
        all_ = std::make_unique<Mixture>(*model_, std::vector<Selection>{everyone});
    }
    return *all_;
}

}  // namespace logo::core
