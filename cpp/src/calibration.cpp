#include "calibration.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "calibration_prompts.h"
#include "session.h"

namespace logo::core {

double raw_signal(RawSignal kind, const std::vector<float> & a, const std::vector<float> & b, int64_t rank,
                  int64_t n_in, int64_t n_out, float scale, const std::vector<float> & prototype, const float * h) {
    if (kind == RawSignal::arrow) {
        double dot = 0, hh = 0;
        for (int64_t c = 0; c < n_in; ++c) {
            dot += double(prototype[size_t(c)]) * double(h[c]);
            hh += double(h[c]) * double(h[c]);
        }
        return hh > 0 ? std::fabs(dot) / std::sqrt(hh) : 0.0;
    }
    std::vector<double> ah(size_t(rank), 0.0);
    for (int64_t k = 0; k < rank; ++k) {
        const float * row = a.data() + k * n_in;
        double s = 0;
        for (int64_t c = 0; c < n_in; ++c) s += double(row[c]) * double(h[c]);
        ah[size_t(k)] = s;
    }
    std::vector<double> o(static_cast<size_t>(n_out));
    for (int64_t i = 0; i < n_out; ++i) {
        const float * row = b.data() + i * rank;
        double s = 0;
        for (int64_t k = 0; k < rank; ++k) s += double(row[k]) * ah[size_t(k)];
        o[size_t(i)] = double(scale) * s;
    }
    if (kind == RawSignal::norm) {
        double ss = 0;
        for (double x : o) ss += x * x;
        return std::sqrt(ss);
    }
    // The paper's entropy: p = softmax(o), H = -sum p ln(p + 1e-8), signal 1 / (H + 1e-6).
    const double top = *std::max_element(o.begin(), o.end());
    double z = 0;
    for (double x : o) z += std::exp(x - top);
    double entropy = 0;
    for (double x : o) {
        const double p = std::exp(x - top) / z;
        entropy -= p * std::log(p + 1e-8);
    }
    return 1.0 / (entropy + 1e-6);
}

const std::vector<float> & GenericStates::at(int layer, ProbePosition position, const std::string & module) const {
    if (position == ProbePosition::last) return last.at(size_t(layer));
    return (module.rfind("attn_", 0) == 0 ? mean_attn : mean_ffn).at(size_t(layer));
}

const GenericStates & CalibrationCache::generic_states(const std::shared_ptr<const Model> & model) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (states_) return *states_;
    const ModelHparams & hp = model->hparams();
    std::vector<std::vector<int32_t>> prompts;
    int longest = 0;
    for (const std::string & text : calibration_prompts()) {
        prompts.push_back(model->vocab().tokenize(text, true, true));
        longest = std::max(longest, int(prompts.back().size()));
    }
    // A private one-sequence session sized for the longest prompt: the caller's contexts are untouched,
    // and a context too short for the generic prompts still gets calibrated signals.
    SessionOptions options;
    options.n_ctx = longest;
    options.n_seq = 1;
    options.n_batch = longest;
    Session session(model, options);
    std::vector<int> layers(size_t(hp.n_layer));
    for (int il = 0; il < int(hp.n_layer); ++il) layers[size_t(il)] = il;

    auto states = std::make_unique<GenericStates>();
    states->n_prompts = int64_t(prompts.size());
    states->n_embd = hp.n_embd;
    const size_t n_embd = size_t(hp.n_embd);
    states->last.assign(size_t(hp.n_layer), std::vector<float>(size_t(states->n_prompts) * n_embd));
    states->mean_attn = states->last;
    states->mean_ffn = states->last;
    std::vector<std::vector<float>> attn_norm, ffn_norm;
    for (const LayerWeights & L : model->weights().layers) {
        attn_norm.push_back(to_host_f32(L.attn_norm));
        ffn_norm.push_back(to_host_f32(L.ffn_norm));
    }
    const int32_t bos = model->vocab().bos();
    std::vector<double> sum_attn(n_embd), sum_ffn(n_embd);
    for (size_t p = 0; p < prompts.size(); ++p) {
        session.clear(0);
        const std::vector<std::vector<float>> hs = session.hidden_states(0, prompts[p], layers);
        const size_t n_tokens = prompts[p].size();
        // As the probe: BOS is left out of the mean unless it is the whole prompt.
        const size_t first = n_tokens > 1 && prompts[p][0] == bos ? 1 : 0;
        for (size_t il = 0; il < hs.size(); ++il) {
            std::memcpy(states->last[il].data() + p * n_embd, hs[il].data() + (n_tokens - 1) * n_embd, sizeof(float) * n_embd);
            std::fill(sum_attn.begin(), sum_attn.end(), 0.0);
            std::fill(sum_ffn.begin(), sum_ffn.end(), 0.0);
            for (size_t t = first; t < n_tokens; ++t) {
                const float * h = hs[il].data() + t * n_embd;
                double ss = 0;
                for (size_t e = 0; e < n_embd; ++e) ss += double(h[e]) * double(h[e]);
                const double inv_rms = 1.0 / std::sqrt(ss / double(n_embd) + double(hp.rms_eps));
                for (size_t e = 0; e < n_embd; ++e) {
                    sum_attn[e] += double(h[e]) * inv_rms * double(attn_norm[il][e]);
                    sum_ffn[e] += double(h[e]) * inv_rms * double(ffn_norm[il][e]);
                }
            }
            for (size_t e = 0; e < n_embd; ++e) {
                states->mean_attn[il][p * n_embd + e] = float(sum_attn[e] / double(n_tokens - first));
                states->mean_ffn[il][p * n_embd + e] = float(sum_ffn[e] / double(n_tokens - first));
            }
        }
    }
    states_ = std::move(states);
    return *states_;
}

SignalStats CalibrationCache::stats(const std::shared_ptr<const Model> & model, const LoraMatrix & m,
                                    uint64_t content_hash, RawSignal kind, ProbePosition position,
                                    const std::vector<float> & prototype, bool squared) {
    const StatsKey key{content_hash, kind, position, squared};
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = stats_.find(key);
        if (it != stats_.end()) return it->second;
    }
    const GenericStates & states = generic_states(model);
    const std::vector<float> a = to_host_f32(m.a), b = to_host_f32(m.b);
    const int64_t n_in = m.base->ne[0], n_out = m.base->ne[1];
    const std::vector<float> & h = states.at(m.layer, position, m.module);
    // Two passes in double: the mean, then the spread around it (no cancellation for tight signals).
    std::vector<double> values(size_t(states.n_prompts));
    for (int64_t p = 0; p < states.n_prompts; ++p) {
        const double v = raw_signal(kind, a, b, m.rank, n_in, n_out, m.scale, prototype, h.data() + p * states.n_embd);
        // zscore_sq ranks by the squared signal: its statistics are those of s^2, from the same double s.
        values[size_t(p)] = squared ? v * v : v;
    }
    SignalStats s;
    for (double v : values) s.mean += v;
    s.mean /= double(values.size());
    for (double v : values) s.std += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(s.std / double(values.size()));
    std::lock_guard<std::mutex> lock(mutex_);
    stats_[key] = s;
    return s;
}

size_t CalibrationCache::n_cached_stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_.size();
}

std::vector<std::pair<StatsKey, SignalStats>> CalibrationCache::entries() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {stats_.begin(), stats_.end()};
}

void CalibrationCache::insert(const std::vector<std::pair<StatsKey, SignalStats>> & entries) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto & [key, s] : entries) stats_.emplace(key, s);  // emplace keeps what this process computed
}

namespace {

// FNV-1a, 64 bits: a content identity for caches, not a defence against crafted collisions.
struct Fnv1a {
    uint64_t h = 0xcbf29ce484222325ull;
    void mix(const void * data, size_t n) {
        const unsigned char * p = static_cast<const unsigned char *>(data);
        for (size_t i = 0; i < n; ++i) {
            h ^= p[i];
            h *= 0x100000001b3ull;
        }
    }
};

std::string hex64(uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    std::string s(16, '0');
    for (int i = 15; i >= 0; --i, v >>= 4) s[size_t(i)] = digits[v & 15];
    return s;
}

}  // namespace

std::string calibration_identity(const Model & model) {
    Fnv1a prompts;
    for (const std::string & text : calibration_prompts()) {
        const uint64_t n = text.size();  // length-prefixed: ["ab", "c"] and ["a", "bc"] differ
        prompts.mix(&n, sizeof(n));
        prompts.mix(text.data(), text.size());
    }
    ggml_backend_dev_t dev = model.device();
    std::string s = "stats=" + std::to_string(kCalibrationStatsVersion);
    s += ";prompts=" + std::to_string(calibration_prompts().size()) + ":" + hex64(prompts.h);
    s += ";device=" + std::string(ggml_backend_dev_name(dev)) + ":" + ggml_backend_dev_description(dev);
    s += ";repack=" + std::string(model.repack() ? "1" : "0");
    return s;
}

uint64_t matrix_content_hash(const LoraMatrix & m, const std::vector<float> & a, const std::vector<float> & b) {
    Fnv1a fnv;
    auto mix = [&fnv](const void * data, size_t n) { fnv.mix(data, n); };
    const int64_t shape[3] = {int64_t(m.rank), m.base->ne[0], m.base->ne[1]};
    mix(shape, sizeof(shape));
    mix(a.data(), sizeof(float) * a.size());
    mix(b.data(), sizeof(float) * b.size());
    mix(&m.scale, sizeof(m.scale));
    mix(&m.layer, sizeof(m.layer));
    mix(m.module.data(), m.module.size());
    return fnv.h;
}

}  // namespace logo::core
