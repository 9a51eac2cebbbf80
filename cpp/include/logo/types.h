// Plain value types of the public API: options, results, routing. No ggml and no Python in here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace logo {

using Token = int32_t;

struct ChatMessage {
    std::string role;
    std::string content;
};

// Greedy, or temperature sampling after top-k, top-p and min-p truncation (llama.cpp's default order).
struct SamplingParams {
    float temperature = 0.8f;  // <= 0: greedy
    int top_k = 40;            // 0: off
    float top_p = 0.95f;       // 1: off
    float min_p = 0.05f;       // 0: off
    uint64_t seed = 0;

    void validate() const;  // throws std::invalid_argument naming the argument
};

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
    std::vector<Token> tokens;
    std::string finish_reason;  // "stop" (a stop string or the callback), "eos", or "length"
    Timings timings;
};

// Receives each new piece of text (complete UTF-8) as it becomes final; returning false stops.
using TextCallback = std::function<bool(int sequence, const std::string & piece)>;

enum class Signal { norm, entropy };
enum class ProbeMode { base, all };

struct RouterOptions {
    int k = 20;
    Signal signal = Signal::norm;
    ProbeMode probe = ProbeMode::base;
    int layer = -1;  // negative counts from the end: -1 is the last block
    std::string module = "attn_q";
};

struct Routing {
    std::vector<int> selected;        // pool indices, highest signal first
    std::vector<float> weights;       // sum to 1
    std::vector<float> signals;       // one per pool adapter (the chosen signal); NaN where not scored
    std::vector<float> norms;         // ||o_i||, NaN where not scored
    std::vector<float> entropies;     // H_i, NaN where not scored
    std::vector<bool> scored;         // whether the adapter adapts the probe module
    int layer = -1;                   // the probed block
    double probe_seconds = 0;
    double select_seconds = 0;
};

// A weighted set of pool adapters: (pool index, weight).
using Mixture = std::vector<std::pair<int, float>>;

}  // namespace logo
