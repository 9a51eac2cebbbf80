// Choosing the next token from logits: greedy, or temperature sampling after top-k, top-p and min-p
// truncation (llama.cpp's default order), from a seeded generator.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "logo/types.h"

namespace logo::core {


class Sampler {
public:
    explicit Sampler(const SamplingParams & params);
    int32_t sample(const float * logits, int32_t n_vocab);

private:
    SamplingParams params_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int32_t>> candidates_;
};

int32_t argmax(const float * logits, int32_t n_vocab);

}  // namespace logo::core
