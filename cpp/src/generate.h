// Text generation over a Session: prefill, then one token per step, with stop strings, EOS,
// streaming of complete UTF-8 text, and timings. Several sequences can decode in one evaluation.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "graph.h"
#include "sampler.h"
#include "session.h"

namespace logo {

struct GenerateOptions {
    int max_tokens = 128;
    SamplingParams sampling;
    std::vector<std::string> stop;  // generation ends before the first occurrence of any of these
    bool ignore_eos = false;

    void validate() const;
};

struct Timings {
    int n_prompt = 0;
    int n_generated = 0;
    double prefill_seconds = 0;
    double decode_seconds = 0;
    double prefill_tokens_per_second() const { return prefill_seconds > 0 ? n_prompt / prefill_seconds : 0; }
    // Decode steps are the evaluations after the prompt's: one per generated token but the first.
    double decode_tokens_per_second() const {
        return decode_seconds > 0 && n_generated > 1 ? (n_generated - 1) / decode_seconds : 0;
    }
};

struct Completion {
    std::string text;
    std::vector<int32_t> tokens;
    std::string finish_reason;  // "stop" (a stop string), "eos", or "length"
    Timings timings;
};

// Receives each new piece of text as it becomes final; returning false ends generation early.
using TextCallback = std::function<bool(int sequence, const std::string & piece)>;

// Generates for each prompt in its own stream (0..n-1) of `session`, which must have at least as many
// streams; prompts are prefilled one after another, then decoded together one token per step.
// `adapters` may carry one mixture for all or one per stream.
std::vector<Completion> generate(Session & session, const std::vector<std::vector<int32_t>> & prompts,
                                 const std::vector<GenerateOptions> & options, const LowRankTerms * adapters,
                                 const TextCallback & on_text);

}  // namespace logo
