#include "sequence.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace logo::core {

namespace {

// Length of the longest prefix of `text` that is complete UTF-8 (a token may end mid-character).
size_t complete_utf8_prefix(const std::string & text) {
    size_t i = text.size();
    for (size_t back = 1; back <= 4 && back <= text.size(); ++back) {
        const unsigned char c = static_cast<unsigned char>(text[text.size() - back]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        size_t need = (c & 0x80) == 0 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        if (need > back) i = text.size() - back;
        break;
    }
    return i;
}

}  // namespace

std::string TextStream::push(const std::string & piece) {
    text_ += piece;
    size_t limit = complete_utf8_prefix(text_);
    for (const auto & s : stop_) {
        const size_t at = text_.find(s, released_ > s.size() ? released_ - s.size() : 0);
        if (at != std::string::npos) {
            text_.resize(at);
            stopped_ = true;
            limit = at;
        }
    }
    if (!stopped_) {
        // Hold back a suffix that could still grow into a stop string.
        for (const auto & s : stop_) {
            for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k) {
                if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
                    limit = std::min(limit, text_.size() - k);
                    break;
                }
            }
        }
    }
    limit = std::max(limit, released_);
    std::string out = text_.substr(released_, limit - released_);
    released_ = limit;
    return out;
}

std::string TextStream::flush() {
    std::string out = text_.substr(released_);
    released_ = text_.size();
    return out;
}

SequenceState::SequenceState(const GenerateOptions & options_)
    : options(options_), sampler(options_.sampling), text(options_.stop) {}

void SequenceState::measure(const float * logits, int32_t n_vocab) {
    // log p_i = x_i - log sum_j exp(x_j), in double with the max subtracted (no overflow, no underflow of the top).
    const float top = *std::max_element(logits, logits + n_vocab);
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; ++i) sum += std::exp(double(logits[i]) - double(top));
    const double log_norm = double(top) + std::log(sum);
    pending_ = TokenLogprob{};
    log_norm_ = log_norm;
    const int n_top = std::min(options.top_logprobs, int(n_vocab));
    if (n_top == 0) return;
    order_.resize(size_t(n_vocab));
    for (int32_t i = 0; i < n_vocab; ++i) order_[size_t(i)] = {logits[i], i};
    std::partial_sort(order_.begin(), order_.begin() + n_top, order_.end(), [](const auto & a, const auto & b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (int i = 0; i < n_top; ++i) {
        pending_.top.emplace_back(order_[size_t(i)].second, float(double(order_[size_t(i)].first) - log_norm));
    }
}

int32_t SequenceState::sample(float * logits, int32_t n_vocab, const Vocab & vocab) {
    if (!options.logprobs) return sample_masked(logits, n_vocab, vocab);
    measure(logits, n_vocab);
    const int32_t token = sample_masked(logits, n_vocab, vocab);
    // Masking rewrites only end-of-generation tokens' logits, which it keeps from being sampled: the sampled
    // token's logit is still the raw one.
    pending_.token = token;
    pending_.logprob = float(double(logits[token]) - log_norm_);
    return token;
}

int32_t SequenceState::sample_masked(float * logits, int32_t n_vocab, const Vocab & vocab) {
    if (options.ignore_eos) {
        for (Token t : vocab.end_of_generation_tokens()) {
            if (t < n_vocab) logits[t] = -std::numeric_limits<float>::infinity();
        }
    }
    return sampler.sample(logits, n_vocab);
}

bool SequenceState::accept(int32_t token, const Vocab & vocab, int length, int n_ctx, std::string & fresh) {
    fresh.clear();
    const bool measured = options.logprobs && pending_.token == token;
    if (!options.ignore_eos && vocab.is_end_of_generation(token)) {
        completion.finish_reason = "eos";
        if (measured) completion.eos = std::move(pending_);
        return false;
    }
    if (options.logprobs) {
        // accept() always follows sample() on one token; a mismatch would be a caller's bug, never a silent entry.
        if (!measured) throw std::logic_error("SequenceState::accept: token was not sampled by sample()");
        completion.logprobs.push_back(std::move(pending_));
        pending_ = TokenLogprob{};
    }
    completion.tokens.push_back(token);
    completion.timings.n_generated = int(completion.tokens.size());
    fresh = text.push(vocab.token_piece(token, false));
    if (text.stopped()) {
        completion.finish_reason = "stop";
        return false;
    }
    if (int(completion.tokens.size()) >= options.max_tokens) {
        completion.finish_reason = "length";
        return false;
    }
    if (length + 1 > n_ctx) {
        completion.finish_reason = "length";  // the context is full
        return false;
    }
    next = token;
    return true;
}

std::vector<TokenLogprob> SequenceState::new_logprobs() {
    std::vector<TokenLogprob> out(completion.logprobs.begin() + std::ptrdiff_t(reported_), completion.logprobs.end());
    reported_ = completion.logprobs.size();
    return out;
}

std::string SequenceState::finish() {
    std::string rest = text.flush();
    completion.text = text.text();
    return rest;
}

}  // namespace logo::core
