// LoGo routing: one probe evaluation scores every adapter of the pool from the hidden state entering
// the target block; the top k get weights proportional to their scores.
#pragma once

#include <string>
#include <vector>

#include "adapter_pool.h"
#include "session.h"

namespace logo {

enum class Signal { norm, entropy };
enum class ProbeMode { base, all };

struct RouterOptions {
    int k = 20;
    Signal signal = Signal::norm;
    ProbeMode probe = ProbeMode::base;
    int layer = -1;  // negative counts from the end: -1 is the last block
    std::string module = "attn_q";

    void validate(const Model & model) const;  // throws invalid_argument naming the option
    int resolved_layer(const Model & model) const;
};

struct Routing {
    std::vector<int> selected;        // pool indices, highest signal first
    std::vector<float> weights;       // sum to 1
    std::vector<float> signals;       // one per pool adapter (the chosen signal); NaN where not scored
    std::vector<float> norms;         // ||o_i||, NaN where not scored
    std::vector<float> entropies;     // H_i, NaN where not scored
    std::vector<bool> scored;         // whether the adapter adapts the probe module
    double probe_seconds = 0;
    double select_seconds = 0;
};

// The probe runs on `stream` of `session` from an empty context: the stream is cleared first.
Routing route(Session & session, int stream, AdapterPool & pool, const std::vector<int32_t> & tokens,
              const RouterOptions & options);

// Top-k by signal (ties to the lower pool index), weights proportional to the signals; k capped at the
// number of scored adapters.
void select_top_k(const std::vector<float> & signals, const std::vector<bool> & scored, int k,
                  std::vector<int> & selected, std::vector<float> & weights);

}  // namespace logo
