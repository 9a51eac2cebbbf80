// LoGo routing: one probe evaluation scores every adapter of the pool from the hidden state entering
// the target block; the top k get weights proportional to their scores.
#pragma once

#include <string>
#include <vector>

#include "adapter_pool.h"
#include "session.h"

namespace logo::core {


// Throws invalid_argument naming the option; resolves a negative layer against the model.
void validate_router_options(const RouterOptions & options, const Model & model);
int resolved_layer(const RouterOptions & options, const Model & model);


// The probe runs on `stream` of `session` from an empty context: the stream is cleared first.
Routing route(Session & session, int stream, AdapterPool & pool, const std::vector<int32_t> & tokens,
              const RouterOptions & options);

// Top-k by signal (ties to the lower pool index), weights proportional to the signals; k capped at the
// number of scored adapters.
void select_top_k(const std::vector<float> & signals, const std::vector<bool> & scored, int k,
                  std::vector<int> & selected, std::vector<float> & weights);

}  // namespace logo::core
