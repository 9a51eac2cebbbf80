// Text generation over a Session: prefill, then one token per step, with stop strings, EOS,
// streaming of complete UTF-8 text, and timings. Several sequences can decode in one evaluation.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "graph.h"
#include "sequence.h"
#include "session.h"

namespace logo::core {

// Generates for each prompt in its own stream (0..n-1) of `session`, which must have at least as many
// streams; prompts are prefilled one after another, then decoded together one token per step.
// `adapters` may carry one mixture for all or one per stream.
std::vector<Completion> generate(Session & session, const std::vector<std::vector<int32_t>> & prompts,
                                 const std::vector<GenerateOptions> & options, const LowRankTerms * adapters,
                                 const TextCallback & on_text);

}  // namespace logo::core
