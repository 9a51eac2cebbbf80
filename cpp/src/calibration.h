// Label-free calibration of LoGo signals: each adapter's raw signal is standardised with its own mean and
// standard deviation over a fixed set of generic, unlabeled prompts (calibration_prompts.h), so that an
// adapter is ranked by how unusually it responds to this input, not by how loud it always is (SEQR,
// arXiv 2509.18093, makes the same point). Everything here depends only on the model, the generic prompts
// and one adapter's own matrices: never on the rest of the pool or the order adapters were added.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "adapter.h"
#include "logo/types.h"
#include "model.h"

namespace logo::core {

// The generic prompts' probe vectors at every block, for both probe positions: the residual entering the
// block at the last prompt token, and the mean over the prompt's tokens (after BOS) of the module input
// RMSNorm(h_t) * w, with w the attention norm's weight (attn_*) or the FFN norm's (ffn_*).
struct GenericStates {
    int64_t n_prompts = 0;
    int64_t n_embd = 0;
    std::vector<std::vector<float>> last;       // [n_layer] of row-major [n_prompts][n_embd]
    std::vector<std::vector<float>> mean_attn;  // the same layout
    std::vector<std::vector<float>> mean_ffn;

    const std::vector<float> & at(int layer, ProbePosition position, const std::string & module) const;
};

// What one adapter's raw signal is: the paper's two, and Arrow's.
enum class RawSignal {
    norm,             // ||s B A h||
    inverse_entropy,  // 1 / (H(softmax(s B A h)) + 1e-6)
    arrow,            // |<v, h>| / ||h||, v the top right singular vector of B A
};

struct SignalStats {
    double mean = 0;
    double std = 0;  // population standard deviation over the generic prompts
};

// What one statistic is of: a matrix (by content, matrix_content_hash) and the variant of its signal.
struct StatsKey {
    uint64_t matrix = 0;
    RawSignal kind = RawSignal::norm;
    ProbePosition position = ProbePosition::last;
    bool squared = false;  // statistics of s^2 (zscore_sq)

    bool operator==(const StatsKey & o) const {
        return matrix == o.matrix && kind == o.kind && position == o.position && squared == o.squared;
    }
};

struct StatsKeyHash {
    size_t operator()(const StatsKey & k) const {
        const uint64_t variant = (uint64_t(k.kind) * 2 + uint64_t(k.position)) * 2 + uint64_t(k.squared) + 1;
        return size_t(k.matrix ^ (0x9e3779b97f4a7c15ull * variant));
    }
};

// Bump when a statistic's value changes for the same model file, adapter matrix and generic prompts (the
// generic states, raw_signal, the mean position's normalisation, the two-pass moments): persistent caches of
// statistics (logo_cpp's disk cache) key on calibration_identity(), which carries it. The prompts themselves
// are hashed into the identity, so changing them needs no bump.
constexpr int kCalibrationStatsVersion = 1;

// What the statistics of a model depend on besides the model file's content and each matrix's content: the
// statistics version, the generic prompts (count and FNV-1a of their bytes), the device and the weights'
// layout (repacked CPU layouts round differently). A printable "key=value;..." string.
std::string calibration_identity(const Model & model);

// The raw signal of one LoRA pair for one probe vector, in double precision (the statistics' reference).
// a: [rank][n_in], b: [n_out][rank] row-major; prototype: [n_in] (arrow only).
double raw_signal(RawSignal kind, const std::vector<float> & a, const std::vector<float> & b, int64_t rank,
                  int64_t n_in, int64_t n_out, float scale, const std::vector<float> & prototype, const float * h);

// Per model: the generic prompts' hidden states (computed once, on first use) and every adapter matrix's
// statistics, keyed by the matrix's content so that removing and re-adding an adapter costs nothing.
class CalibrationCache {
public:
    // Runs the generic prompts through `model` (a private session: the caller's contexts are untouched).
    const GenericStates & generic_states(const std::shared_ptr<const Model> & model);

    // Statistics of `kind` (of its square when `squared`) for matrix m over the generic prompts at m's layer.
    // content_hash identifies m's values (see matrix_content_hash); prototype is the matrix's Arrow vector
    // (arrow only).
    SignalStats stats(const std::shared_ptr<const Model> & model, const LoraMatrix & m, uint64_t content_hash,
                      RawSignal kind, ProbePosition position, const std::vector<float> & prototype,
                      bool squared = false);

    size_t n_cached_stats();

    // Every statistic held, for a persistent cache to save (order unspecified).
    std::vector<std::pair<StatsKey, SignalStats>> entries();
    // Statistics computed earlier for this model (a persistent cache): a key already held keeps its value.
    void insert(const std::vector<std::pair<StatsKey, SignalStats>> & entries);

private:
    std::mutex mutex_;
    std::unique_ptr<GenericStates> states_;
    std::unordered_map<StatsKey, SignalStats, StatsKeyHash> stats_;
};

// FNV-1a over the matrix's shape, values (as F32), scale, layer and module: equal for equal adapters.
uint64_t matrix_content_hash(const LoraMatrix & m, const std::vector<float> & a, const std::vector<float> & b);

}  // namespace logo::core
