// Stochastic rounding of a requantized fold (FoldMode::requantize_stochastic): re-rounds each element of
// ggml's nearest quantization onto the same block grid, up or down with the probability that makes the
// dequantized value's expectation the exact value. A quantized weight cannot hold a change smaller than half
// its step (nearest rounding gives the old value back); unbiased rounding keeps such changes on average over
// the many weights a matmul sums. Measured: docs/mixtures-on-quantized-bases.md section 11.
#pragma once

#include <cstdint>
#include <string>

#include "ggml.h"

namespace logo::core {

// Whether round_stochastically() handles blocks of `type`: the one-scale formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
// (value = (q - offset) * d [+ m]). Others (K-quants, IQ*) keep ggml's nearest rounding.
bool rounds_stochastically(ggml_type type);

// `blocks`: n_elements values of `type` as ggml's quantizer wrote them from `exact` (their scales are kept);
// each quant becomes floor((exact - m) / d + offset + u), clamped to the type's range, with u uniform in [0, 1)
// from a counter-based hash of (seed, element index): the same inputs give the same bytes.
void round_stochastically(ggml_type type, const float * exact, uint8_t * blocks, int64_t n_elements, uint64_t seed);

// A seed for one weight: FNV-1a of its name.
uint64_t rounding_seed(const std::string & name);

}  // namespace logo::core
