// A pool of resident adapters over one model, with the per-module stacks the LoGo probe scores
// every adapter from (built on first use and rebuilt after the pool changes).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "adapter.h"
#include "calibration.h"
#include "mixture.h"

namespace logo::core {

// Every adapter's LoRA on one module of one layer, stacked for one matmul pair:
// a_all [n_in, r_max * n] (zero rows pad ranks below r_max), b_all [r_max, n_out, n] with alpha/r folded in,
// ra_all [n_in, r_max * n] the norm factors R_i A_i (lora_norm_factor: ||s B A h|| = ||R A h||, one matmul
// for the norm signal alone), and what calibration and Arrow need of each (per adapter, in stack order).
struct ProbeBank {
    int layer = -1;
    std::string module;
    std::vector<int> adapters;  // pool indices of the adapters that adapt this module, in stack order
    int r_max = 0;
    ggml_tensor * a_all = nullptr;
    ggml_tensor * b_all = nullptr;
    ggml_tensor * ra_all = nullptr;
    ggml_tensor * prototypes = nullptr;  // [n_in, n]: each adapter's top right singular vector of B A (Arrow)
    std::vector<double> frobenius;       // ||s B A||_F
    std::vector<double> spectral;        // ||s B A||_2
    std::vector<uint64_t> content_hash;  // matrix_content_hash: the key of the adapter's statistics
    std::vector<std::vector<float>> prototype_host;  // the prototypes on the host, for their statistics
    // Statistics over the generic prompts, per raw signal, probe position and whether of the squared signal,
    // filled on first use (AdapterPool::bank_stats).
    std::map<std::tuple<RawSignal, ProbePosition, bool>, std::vector<SignalStats>> stats;

    ProbeBank() = default;
    ~ProbeBank();
    ProbeBank(const ProbeBank &) = delete;
    ProbeBank & operator=(const ProbeBank &) = delete;

    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buffer = nullptr;
};

class AdapterPool {
public:
    explicit AdapterPool(std::shared_ptr<const Model> model);

    const Model & model() const { return *model_; }

    // Loads all files or none: on any error the pool is unchanged. Empty names take the file's stem.
    // Returns the names given.
    std::vector<std::string> add(const std::vector<std::string> & paths, const std::vector<std::string> & names);
    // Adapters from memory (each named): the same checks and the same all-or-nothing rule as files.
    std::vector<std::string> add_tensors(const std::vector<AdapterData> & adapters);
    void remove(const std::string & name);

    size_t size() const { return adapters_.size(); }
    std::vector<std::string> names() const;
    int index_of(const std::string & name) const;  // -1 when absent
    const Adapter & at(size_t index) const { return *adapters_.at(index); }
    size_t bytes() const;

    // The stacks for one (layer, module); nullptr-free: a module no adapter touches gives an empty bank.
    const ProbeBank & probe_bank(int layer, const std::string & module);
    // Every adapter at user scale 1, as one mixture (the probe="all" mode).
    const Mixture & all_adapters();

    // Each bank adapter's statistics of `kind` over the generic prompts (in stack order). Computed on first
    // use from the model's cached generic hidden states and cached per matrix content on the model, so they
    // never depend on the rest of the pool and re-adding an adapter costs nothing.
    // squared: the statistics of s^2 (calibration zscore_sq) rather than of s.
    const std::vector<SignalStats> & bank_stats(const ProbeBank & bank, RawSignal kind, ProbePosition position,
                                                bool squared = false);

private:
    std::shared_ptr<const Model> model_;
    std::vector<std::unique_ptr<Adapter>> adapters_;
    std::mutex cache_mutex_;
    std::map<std::pair<int, std::string>, std::unique_ptr<ProbeBank>> banks_;
    std::unique_ptr<Mixture> all_;

    void insert(std::vector<std::unique_ptr<Adapter>> loaded);
    void invalidate();
};

}  // namespace logo::core
