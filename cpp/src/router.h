// LoGo routing: one probe evaluation scores every adapter of the pool from the hidden state entering
// the probed block(s); signals are calibrated per adapter (calibration.h), the top k get weights
// proportional to their raw signals (the paper) or softmax(z / T) of their calibrated signals.
#pragma once

#include <string>
#include <vector>

#include "adapter_pool.h"
#include "session.h"

namespace logo::core {

// Throws invalid_argument naming the option; resolves negative layers against the model.
void validate_router_options(const RouterOptions & options, const Model & model);
int resolved_layer(const RouterOptions & options, const Model & model);            // the last probed block
std::vector<int> resolved_layers(const RouterOptions & options, const Model & model);  // ascending, distinct

// The RMSNorm weight of the input `module` reads in block `layer` (the "mean" probe position's norm).
ggml_tensor * module_norm_weight(const Model & model, int layer, const std::string & module);

// The probe runs on `stream` of `session` from an empty context: the stream is cleared first.
Routing route(Session & session, int stream, AdapterPool & pool, const std::vector<int32_t> & tokens,
              const RouterOptions & options);

// Top-k by `ranking` (ties to the lower pool index), weights proportional to `magnitudes` of the selected
// (equal when they sum to 0); k capped at the number of scored adapters.
void select_top_k(const std::vector<float> & ranking, const std::vector<float> & magnitudes,
                  const std::vector<bool> & scored, int k, std::vector<int> & selected, std::vector<float> & weights);
// The paper's rule: rank by the signals and weight by them.
void select_top_k(const std::vector<float> & signals, const std::vector<bool> & scored, int k,
                  std::vector<int> & selected, std::vector<float> & weights);

// w_i = exp((z_i - max z) / temperature), normalised, for the selected adapters' calibrated signals z (in
// double; subtracting the max changes nothing mathematically and keeps exp finite). temperature must be
// finite and > 0. A non-finite z (a degenerate calibration) gets the equal share among the selected adapters
// at the largest value, others 0, instead of NaN weights.
std::vector<float> softmax_weights(const std::vector<float> & z, const std::vector<int> & selected, float temperature);

}  // namespace logo::core
