// One sequence's generation state, shared by batch generation (generate.cpp) and continuous batching
// (batch_decoder.cpp): its options, its sampler, the text released so far, and the result it builds.
#pragma once

#include <string>
#include <vector>

#include "logo/types.h"
#include "sampler.h"
#include "vocab.h"

namespace logo::core {

// Accumulates generated text, finds stop strings, and releases only text that can no longer change:
// neither a partial UTF-8 character nor the beginning of a stop string.
class TextStream {
public:
    explicit TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {}

    // Appends one token's bytes; returns the newly final text.
    std::string push(const std::string & piece);
    // Everything not yet released (at the end of generation).
    std::string flush();
    bool stopped() const { return stopped_; }
    const std::string & text() const { return text_; }

private:
    std::vector<std::string> stop_;
    std::string text_;
    size_t released_ = 0;
    bool stopped_ = false;
};

struct SequenceState {
    explicit SequenceState(const GenerateOptions & options);

    GenerateOptions options;
    Sampler sampler;
    TextStream text;
    Completion completion;
    int32_t next = 0;  // the token the next decode step feeds (the last accepted one)

    // Samples the next token from `logits` ([n_vocab], modified): with options.ignore_eos every
    // end-of-generation token is masked first (logit -inf), so generation never produces one, as llama-server's
    // ignore_eos (a -inf logit bias on the end-of-generation tokens). With options.logprobs it first measures
    // the raw logits' log-softmax (TokenLogprob: before masking and sampling), filed by accept().
    int32_t sample(float * logits, int32_t n_vocab, const Vocab & vocab);
    // Takes a sampled token. Returns whether the sequence goes on; otherwise completion.finish_reason is
    // set ("eos", "stop" or "length"). `fresh` receives the text that became final. `length` is the
    // sequence's cache length and `n_ctx` its capacity: a full context ends it with "length".
    bool accept(int32_t token, const Vocab & vocab, int length, int n_ctx, std::string & fresh);
    // Ends the sequence: the unreleased rest of its text, and completion.text set.
    std::string finish();
    // The completion.logprobs entries added since the last call (streaming events carry them).
    std::vector<TokenLogprob> new_logprobs();

private:
    TokenLogprob pending_;      // the last sampled token's entry, until accept() files it
    double log_norm_ = 0;       // log sum exp of the last measured logits
    size_t reported_ = 0;       // completion.logprobs entries new_logprobs() has handed out
    std::vector<std::pair<float, int32_t>> order_;  // scratch for the top alternatives
    // The log-softmax normaliser of the raw logits (log_norm_) and the top alternatives (pending_.top).
    void measure(const float * logits, int32_t n_vocab);
    // Masks end-of-generation tokens under ignore_eos, then samples.
    int32_t sample_masked(float * logits, int32_t n_vocab, const Vocab & vocab);
};

}  // namespace logo::core
