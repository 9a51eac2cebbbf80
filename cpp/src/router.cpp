#include "router.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace logo {

const char * to_string(Signal signal) {
    switch (signal) {
        case Signal::norm: return "norm";
        case Signal::entropy: return "entropy";
        case Signal::arrow: return "arrow";
    }
    return "?";
}

const char * to_string(Calibration calibration) {
    switch (calibration) {
        case Calibration::none: return "none";
        case Calibration::zscore: return "zscore";
        case Calibration::spectral: return "spectral";
        case Calibration::frobenius: return "frobenius";
        case Calibration::zscore_sq: return "zscore_sq";
    }
    return "?";
}

const char * to_string(ProbePosition position) { return position == ProbePosition::last ? "last" : "mean"; }

const char * to_string(MixtureWeighting weighting) {
    return weighting == MixtureWeighting::signal ? "signal" : "softmax";
}

}  // namespace logo

namespace logo::core {

namespace {

void check_layer(int layer, int n_layer) {
    if (layer >= n_layer || layer < -n_layer) {
        throw std::invalid_argument("layer " + std::to_string(layer) + " is out of range: the model has " +
                                    std::to_string(n_layer) + " blocks (use 0.." + std::to_string(n_layer - 1) +
                                    " or -1..-" + std::to_string(n_layer) + ")");
    }
}

}  // namespace

ggml_tensor * module_norm_weight(const Model & model, int layer, const std::string & module) {
    const LayerWeights & L = model.weights().layers.at(size_t(layer));
    // attn_q/k/v read the attention RMSNorm's output. ffn_gate/up read the FFN RMSNorm of the residual after
    // attention; the probe has only the block's input, so their mean uses the FFN norm's weight on that.
    return module.rfind("attn_", 0) == 0 ? L.attn_norm : L.ffn_norm;
}

namespace {

RawSignal raw_kind(Signal signal) {
    switch (signal) {
        case Signal::norm: return RawSignal::norm;
        case Signal::entropy: return RawSignal::inverse_entropy;
        case Signal::arrow: return RawSignal::arrow;
    }
    throw std::invalid_argument("unknown signal");
}

}  // namespace

void validate_router_options(const RouterOptions & options, const Model & model) {
    const int k = options.k;
    const std::string & module = options.module;
    if (k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(k));
    const int n_layer = int(model.hparams().n_layer);
    check_layer(options.layer, n_layer);
    for (int layer : options.layers) check_layer(layer, n_layer);
    // The probe vector is the block's input, so the module must read n_embd-wide inputs.
    const std::vector<std::string> probe_modules = {"attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"};
    for (const std::string * m : {&module, &options.fallback_module}) {
        if (m == &options.fallback_module && m->empty()) continue;  // no fallback
        if (std::find(probe_modules.begin(), probe_modules.end(), *m) == probe_modules.end()) {
            throw std::invalid_argument(std::string(m == &module ? "module" : "fallback module") + " '" + *m +
                                        "' cannot be probed; use one of attn_q, attn_k, attn_v, ffn_gate, ffn_up "
                                        "(modules that read the block's input)");
        }
    }
    const int s = int(options.signal), c = int(options.calibration), p = int(options.position);
    if (p < 0 || p > int(ProbePosition::mean)) throw std::invalid_argument("unknown probe position; use last or mean");
    if (s < 0 || s > int(Signal::arrow)) throw std::invalid_argument("unknown signal; use norm, entropy or arrow");
    if (c < 0 || c > int(Calibration::zscore_sq)) {
        throw std::invalid_argument("unknown calibration; use none, zscore, zscore_sq, spectral or frobenius");
    }
    const int w = int(options.weighting);
    if (w < 0 || w > int(MixtureWeighting::softmax)) throw std::invalid_argument("unknown weighting; use signal or softmax");
    if (!std::isfinite(options.temperature) || options.temperature <= 0) {
        throw std::invalid_argument("temperature must be a finite number > 0, got " + std::to_string(options.temperature));
    }
    if (options.layers.empty() && options.n_blocks < 1) {
        throw std::invalid_argument("n_blocks must be >= 1, got " + std::to_string(options.n_blocks));
    }
}

int resolved_layer(const RouterOptions & options, const Model & model) { return resolved_layers(options, model).back(); }

std::vector<int> resolved_layers(const RouterOptions & options, const Model & model) {
    const int n_layer = int(model.hparams().n_layer);
    std::vector<int> out;
    if (options.layers.empty()) {
        const int last = options.layer < 0 ? n_layer + options.layer : options.layer;
        for (int l = std::max(0, last - options.n_blocks + 1); l <= last; ++l) out.push_back(l);
        return out;
    }
    for (int layer : options.layers) out.push_back(layer < 0 ? n_layer + layer : layer);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

void select_top_k(const std::vector<float> & signals, const std::vector<bool> & scored, int k,
                  std::vector<int> & selected, std::vector<float> & weights) {
    select_top_k(signals, signals, scored, k, selected, weights);
}

void select_top_k(const std::vector<float> & ranking, const std::vector<float> & magnitudes,
                  const std::vector<bool> & scored, int k, std::vector<int> & selected, std::vector<float> & weights) {
    std::vector<int> order;
    for (size_t i = 0; i < ranking.size(); ++i) {
        if (scored[i]) order.push_back(int(i));
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ranking[size_t(a)] > ranking[size_t(b)]; });
    order.resize(std::min(order.size(), size_t(k)));
    selected = order;
    double total = 0;
    for (int i : selected) total += magnitudes[size_t(i)];
    weights.clear();
    for (int i : selected) {
        // All-zero signals (an input the adapters ignore) fall back to equal weights.
        weights.push_back(total > 0 ? float(magnitudes[size_t(i)] / total) : 1.0f / float(selected.size()));
    }
}

std::vector<float> softmax_weights(const std::vector<float> & z, const std::vector<int> & selected, float temperature) {
    std::vector<float> weights;
    if (selected.empty()) return weights;
    double top = -std::numeric_limits<double>::infinity();
    for (int i : selected) top = std::max(top, double(z[size_t(i)]));
    std::vector<double> e;
    double total = 0;
    bool finite = std::isfinite(top);
    for (int i : selected) {
        const double x = std::exp((double(z[size_t(i)]) - top) / double(temperature));
        finite = finite && std::isfinite(x);
        e.push_back(x);
        total += x;
    }
    if (!finite) {
        // +inf or NaN among the scores: the adapters at the top value share the mixture equally.
        int n_top = 0;
        for (int i : selected) n_top += double(z[size_t(i)]) == top;
        for (int i : selected) weights.push_back(double(z[size_t(i)]) == top && n_top > 0 ? 1.0f / float(n_top) : 0.0f);
        if (n_top == 0) weights.assign(selected.size(), 1.0f / float(selected.size()));
        return weights;
    }
    for (double x : e) weights.push_back(float(x / total));
    return weights;
}

Routing route(Session & session, int stream, AdapterPool & pool, const std::vector<int32_t> & tokens,
              const RouterOptions & options) {
    using Clock = std::chrono::steady_clock;
    const Model & model = session.model();
    validate_router_options(options, model);
    if (pool.size() == 0) throw std::invalid_argument("the adapter pool is empty");
    const std::vector<int> layers = resolved_layers(options, model);

    // One bank per probed block; a block no adapter adapts contributes nothing. A pool that does not adapt
    // `module` at any probed block is probed at the fallback module instead (the default router probes
    // attn_v and falls back to the paper's attn_q, so q-only pools still route).
    std::vector<const ProbeBank *> banks;
    std::vector<size_t> bank_layer_index;  // which of `layers` each bank probes
    std::string module = options.module;
    for (int attempt = 0; attempt < 2 && banks.empty(); ++attempt) {
        if (attempt == 1) {
            if (options.fallback_module.empty() || options.fallback_module == options.module) break;
            module = options.fallback_module;
        }
        for (size_t l = 0; l < layers.size(); ++l) {
            const ProbeBank & bank = pool.probe_bank(layers[l], module);
            if (bank.adapters.empty()) continue;
            banks.push_back(&bank);
            bank_layer_index.push_back(l);
        }
    }
    if (banks.empty()) {
        std::string where;
        for (int l : layers) where += (where.empty() ? "blk." : ", blk.") + std::to_string(l) + "." + options.module;
        if (!options.fallback_module.empty() && options.fallback_module != options.module) {
            where += " (nor " + options.fallback_module + " there)";
        }
        throw std::invalid_argument("no adapter in the pool adapts " + where + ", so none can be scored; choose another "
                                    "module or layer");
    }

    // Statistics first (a no-op once cached), so that probe_seconds measures the probe alone.
    const auto t_cal = Clock::now();
    const RawSignal kind = raw_kind(options.signal);
    std::vector<const std::vector<SignalStats> *> stats(banks.size(), nullptr);
    const bool squared = options.calibration == Calibration::zscore_sq;
    if (options.calibration == Calibration::zscore || squared) {
        for (size_t b = 0; b < banks.size(); ++b) {
            stats[b] = &pool.bank_stats(*banks[b], kind, options.position, squared);
        }
    }
    const double calibration_seconds = std::chrono::duration<double>(Clock::now() - t_cal).count();

    const LowRankTerms * probe_adapters = options.probe == ProbeMode::all ? &pool.all_adapters().terms() : nullptr;
    const bool arrow = options.signal == Signal::arrow;
    // A calibrated norm router needs the norms alone: one matmul with the norm factors R_i A_i per block
    // (||s B A h|| = ||R A h||), no n_out-wide outputs, no entropy. Calibration none keeps the paper's
    // computation (o_i, its norm and entropy) bit for bit.
    const bool norm_only = options.signal == Signal::norm && options.calibration != Calibration::none;
    GraphTail scoring = [&](ggml_context * ctx, const std::vector<ggml_tensor *> & h_at) -> std::vector<ggml_tensor *> {
        std::vector<ggml_tensor *> out;
        for (size_t b = 0; b < banks.size(); ++b) {
            graph_reserve(ctx, 32);  // one bank's scoring: at most 14 tensors
            const ProbeBank & bank = *banks[b];
            ggml_tensor * h = h_at[bank_layer_index[b]];                          // [n_embd, 1]
            const int64_t n = int64_t(bank.adapters.size());
            if (arrow) {
                out.push_back(ggml_mul_mat(ctx, bank.prototypes, h));              // [n, 1]: <v_i, h>
                out.push_back(ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, h))));  // [1, 1]: ||h||
                continue;
            }
            if (norm_only) {
                ggml_tensor * y = ggml_mul_mat(ctx, bank.ra_all, h);             // [r_max * n, 1]: R_i A_i h
                y = ggml_reshape_2d(ctx, y, bank.r_max, n);                      // [r_max, n]
                out.push_back(ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, y))));  // [1, n]: ||o_i||
                continue;
            }
            ggml_tensor * a = ggml_mul_mat(ctx, bank.a_all, h);              // [r_max * n, 1]
            a = ggml_reshape_3d(ctx, a, bank.r_max, 1, n);                   // [r_max, 1, n]
            ggml_tensor * o = ggml_mul_mat(ctx, bank.b_all, a);              // [n_out, 1, n]: o_i = s_i B_i A_i h
            ggml_tensor * norm = ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, o)));  // [1, 1, n]
            ggml_tensor * p = ggml_soft_max(ctx, o);                         // softmax over each o_i
            ggml_tensor * p_log_p = ggml_mul(ctx, p, ggml_log(ctx, ggml_scale_bias(ctx, p, 1.0f, 1e-8f)));
            ggml_tensor * neg_entropy = ggml_sum_rows(ctx, p_log_p);         // [1, 1, n]
            out.push_back(norm);
            out.push_back(neg_entropy);
        }
        return out;
    };

    const auto t0 = Clock::now();
    session.clear(stream);  // the probe reads the prompt alone, never what the stream held before
    const ProbeAt at = options.position == ProbePosition::last ? ProbeAt::last_token : ProbeAt::token_mean;
    std::vector<ggml_tensor *> norm_weights;
    if (at == ProbeAt::token_mean) {
        for (int l : layers) norm_weights.push_back(module_norm_weight(model, l, module));
    }
    std::vector<std::vector<float>> out = session.probe(stream, tokens, layers, probe_adapters, scoring, at, norm_weights);
    const auto t1 = Clock::now();

    Routing r;
    const size_t N = pool.size();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    r.signals.assign(N, nan);
    r.raw_signals.assign(N, nan);
    r.norms.assign(N, nan);
    r.entropies.assign(N, nan);
    r.scored.assign(N, false);
    // Per adapter: raw and calibrated signals summed over the banks that score it, and how many do.
    std::vector<double> raw_sum(N, 0.0), calibrated_sum(N, 0.0), norm_sum(N, 0.0), entropy_sum(N, 0.0);
    std::vector<int> parts(N, 0);
    for (size_t b = 0; b < banks.size(); ++b) {
        const ProbeBank & bank = *banks[b];
        for (size_t j = 0; j < bank.adapters.size(); ++j) {
            const size_t i = size_t(bank.adapters[j]);
            float raw;
            if (arrow) {
                const float h_norm = out[2 * b + 1][0];
                raw = h_norm > 0 ? std::fabs(out[2 * b][j]) / h_norm : 0.0f;
            } else if (norm_only) {
                raw = out[b][j];
                norm_sum[i] += raw;
            } else {
                const float norm = out[2 * b][j], entropy = -out[2 * b + 1][j];
                norm_sum[i] += norm;
                entropy_sum[i] += entropy;
                // The paper's signals, computed exactly as before calibration existed.
                raw = options.signal == Signal::norm ? norm : float(1.0 / (double(entropy) + 1e-6));
            }
            double calibrated = raw;
            switch (options.calibration) {
                case Calibration::none: break;
                case Calibration::zscore:
                case Calibration::zscore_sq: {
                    const SignalStats & s = (*stats[b])[j];
                    const double value = squared ? double(raw) * double(raw) : double(raw);
                    // A signal that never varies over the generic prompts carries no information about
                    // fit; a tiny floor keeps it finite without letting it dominate.
                    calibrated = (value - s.mean) / std::max(s.std, 1e-6 * std::fabs(s.mean) + 1e-30);
                    break;
                }
                case Calibration::spectral: calibrated = bank.spectral[j] > 0 ? raw / bank.spectral[j] : 0.0; break;
                case Calibration::frobenius: calibrated = bank.frobenius[j] > 0 ? raw / bank.frobenius[j] : 0.0; break;
            }
            raw_sum[i] += raw;
            calibrated_sum[i] += calibrated;
            parts[i] += 1;
        }
    }
    for (size_t i = 0; i < N; ++i) {
        if (parts[i] == 0) continue;
        r.scored[i] = true;
        if (parts[i] == 1) {
            // One probed block (the paper's setting): the signals themselves, no re-rounding.
            r.raw_signals[i] = float(raw_sum[i]);
            r.signals[i] = float(calibrated_sum[i]);
        } else {
            r.raw_signals[i] = float(raw_sum[i]);
            r.signals[i] = float(options.calibration == Calibration::none ? calibrated_sum[i] : calibrated_sum[i] / parts[i]);
        }
        if (!arrow) r.norms[i] = float(norm_sum[i]);
        if (!arrow && !norm_only) r.entropies[i] = float(entropy_sum[i] / parts[i]);
    }
    select_top_k(r.signals, r.raw_signals, r.scored, options.k, r.selected, r.weights);
    r.weighting = options.weighting;
    if (options.weighting == MixtureWeighting::softmax) {
        r.weights = softmax_weights(r.signals, r.selected, options.temperature);
        r.temperature = options.temperature;
    }
    r.signal = options.signal;
    r.calibration = options.calibration;
    r.position = options.position;
    r.module = module;
    r.layers = layers;
    r.layer = layers.back();
    r.probe_seconds = std::chrono::duration<double>(t1 - t0).count();
    r.calibration_seconds = calibration_seconds;
    r.select_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
    return r;
}

}  // namespace logo::core
