#include "router.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace logo::core {

void validate_router_options(const RouterOptions & options, const Model & model) {
    const int k = options.k, layer = options.layer;
    const std::string & module = options.module;
    if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
    const int n_layer = int(model.hparams().n_layer);
    if (layer >= n_layer || layer < -n_layer) {
        throw std::invalid_argument("layer " + std::to_string(layer) + " is out of range: the model has " +
                                    std::to_string(n_layer) + " blocks (use 0.." + std::to_string(n_layer - 1) +
                                    " or -1..-" + std::to_string(n_layer) + ")");
    }
    // The probe vector is the block's input, so the module must read n_embd-wide inputs.
    const std::vector<std::string> probe_modules = {"attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"};
    if (std::find(probe_modules.begin(), probe_modules.end(), module) == probe_modules.end()) {
        throw std::invalid_argument("module '" + module + "' cannot be probed; use one of attn_q, attn_k, attn_v, "
                                    "ffn_gate, ffn_up (modules that read the block's input)");
    }
}

int resolved_layer(const RouterOptions & options, const Model & model) {
    const int layer = options.layer;
    return layer < 0 ? int(model.hparams().n_layer) + layer : layer;
}

void select_top_k(const std::vector<float> & signals, const std::vector<bool> & scored, int k,
                  std::vector<int> & selected, std::vector<float> & weights) {
    std::vector<int> order;
    for (size_t i = 0; i < signals.size(); ++i) {
        if (scored[i]) order.push_back(int(i));
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return signals[size_t(a)] > signals[size_t(b)]; });
    order.resize(std::min(order.size(), size_t(k)));
    selected = order;
    double total = 0;
    for (int i : selected) total += signals[size_t(i)];
    weights.clear();
    for (int i : selected) {
        // All-zero signals (an input the adapters ignore) fall back to equal weights.
        weights.push_back(total > 0 ? float(signals[size_t(i)] / total) : 1.0f / float(selected.size()));
    }
}

Routing route(Session & session, int stream, AdapterPool & pool, const std::vector<int32_t> & tokens,
              const RouterOptions & options) {
    const Model & model = session.model();
    validate_router_options(options, model);
    if (pool.size() == 0) throw std::invalid_argument("the adapter pool is empty");
    const int layer = resolved_layer(options, model);
    const ProbeBank & bank = pool.probe_bank(layer, options.module);
    if (bank.adapters.empty()) {
        throw std::invalid_argument("no adapter in the pool adapts blk." + std::to_string(layer) + "." + options.module +
                                    ", so none can be scored; choose another module or layer");
    }
    const LowRankTerms * probe_adapters = options.probe == ProbeMode::all ? &pool.all_adapters().terms() : nullptr;

    const int64_t n = int64_t(bank.adapters.size());
    GraphTail scoring = [&](ggml_context * ctx, ggml_tensor * h) -> std::vector<ggml_tensor *> {
        ggml_tensor * a = ggml_mul_mat(ctx, bank.a_all, h);              // [r_max * n, 1]
        a = ggml_reshape_3d(ctx, a, bank.r_max, 1, n);                   // [r_max, 1, n]
        ggml_tensor * o = ggml_mul_mat(ctx, bank.b_all, a);              // [n_out, 1, n]: o_i = s_i B_i A_i h
        ggml_tensor * norm = ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, o)));  // [1, 1, n]
        ggml_tensor * p = ggml_soft_max(ctx, o);                         // softmax over each o_i
        ggml_tensor * p_log_p = ggml_mul(ctx, p, ggml_log(ctx, ggml_scale_bias(ctx, p, 1.0f, 1e-8f)));
        ggml_tensor * neg_entropy = ggml_sum_rows(ctx, p_log_p);         // [1, 1, n]
        return {norm, neg_entropy};
    };

    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    session.clear(stream);  // the probe reads the prompt alone, never what the stream held before
    std::vector<std::vector<float>> out = session.probe(stream, tokens, layer, probe_adapters, scoring);
    const auto t1 = Clock::now();

    Routing r;
    const size_t N = pool.size();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    r.signals.assign(N, nan);
    r.norms.assign(N, nan);
    r.entropies.assign(N, nan);
    r.scored.assign(N, false);
    for (int64_t j = 0; j < n; ++j) {
        const size_t i = size_t(bank.adapters[size_t(j)]);
        r.scored[i] = true;
        r.norms[i] = out[0][size_t(j)];
        r.entropies[i] = -out[1][size_t(j)];
        r.signals[i] = options.signal == Signal::norm ? r.norms[i] : float(1.0 / (double(r.entropies[i]) + 1e-6));
    }
    select_top_k(r.signals, r.scored, options.k, r.selected, r.weights);
    r.layer = layer;
    r.probe_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.select_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
    return r;
}

}  // namespace logo::core
