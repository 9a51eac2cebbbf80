#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace logo::core {

}  // namespace logo::core

namespace logo {

void SamplingParams::validate() const {
    if (!std::isfinite(temperature) || temperature < 0) {
        throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(temperature));
    }
    if (top_k < 0) throw std::invalid_argument("top_k must be >= 0 (0 disables it), got " + std::to_string(top_k));
    if (!(top_p > 0 && top_p <= 1)) throw std::invalid_argument("top_p must be in (0, 1], got " + std::to_string(top_p));
    if (!(min_p >= 0 && min_p < 1)) throw std::invalid_argument("min_p must be in [0, 1), got " + std::to_string(min_p));
}

}  // namespace logo

namespace logo::core {

int32_t argmax(const float * logits, int32_t n_vocab) {
    return int32_t(std::max_element(logits, logits + n_vocab) - logits);
}

Sampler::Sampler(const SamplingParams & params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::sample(const float * logits, int32_t n_vocab) {
    if (params_.temperature <= 0) return argmax(logits, n_vocab);

    candidates_.resize(size_t(n_vocab));
    for (int32_t i = 0; i < n_vocab; ++i) candidates_[size_t(i)] = {logits[i], i};
    auto by_logit = [](const auto & a, const auto & b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    size_t n = candidates_.size();
    if (params_.top_k > 0 && size_t(params_.top_k) < n) {
        std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), by_logit);
        n = size_t(params_.top_k);
    } else {
        std::sort(candidates_.begin(), candidates_.end(), by_logit);
    }

    // Probabilities at temperature 1 decide the top-p and min-p cut, as llama.cpp's chain does.
    std::vector<double> p(n);
    double total = 0;
    for (size_t i = 0; i < n; ++i) total += p[i] = std::exp(double(candidates_[i].first - candidates_[0].first));
    double cumulative = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
        cumulative += p[i] / total;
        if (cumulative >= params_.top_p) {
            keep = i + 1;
            break;
        }
    }
    const double floor = params_.min_p * (p[0] / total);
    while (keep > 1 && p[keep - 1] / total < floor) --keep;

    std::vector<double> weights(keep);
    for (size_t i = 0; i < keep; ++i) {
        weights[i] = std::exp(double(candidates_[i].first - candidates_[0].first) / params_.temperature);
    }
    std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
    return candidates_[pick(rng_)].second;
}

}  // namespace logo::core
