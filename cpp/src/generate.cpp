#include "generate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace logo {

void GenerateOptions::validate() const {
    if (max_tokens < 0) throw std::invalid_argument("max_tokens must be >= 0, got " + std::to_string(max_tokens));
    for (const auto & s : stop) {
        if (s.empty()) throw std::invalid_argument("stop strings must not be empty");
    }
    if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
        throw std::invalid_argument("top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) + "], got " +
                                    std::to_string(top_logprobs));
    }
    if (top_logprobs > 0 && !logprobs) throw std::invalid_argument("top_logprobs needs logprobs = true");
    sampling.validate();
    if (fold != FoldMode::exact && fold != FoldMode::requantize && fold != FoldMode::requantize_stochastic &&
        fold != FoldMode::upcast) {
        throw std::invalid_argument("fold must be exact, requantize, requantize_stochastic or upcast, got " +
                                    std::to_string(int(fold)));
    }
}

const char * to_string(FoldMode fold) {
    switch (fold) {
        case FoldMode::requantize: return "requantize";
        case FoldMode::requantize_stochastic: return "requantize-stochastic";
        case FoldMode::upcast: return "upcast";
        default: return "exact";
    }
}

}  // namespace logo

namespace logo::core {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

std::vector<Completion> generate(Session & session, const std::vector<std::vector<int32_t>> & prompts,
                                 const std::vector<GenerateOptions> & options, const LowRankTerms * adapters,
                                 const TextCallback & on_text) {
    const int n_seq = int(prompts.size());
    if (n_seq == 0) throw std::invalid_argument("no prompts to generate from");
    if (options.size() != prompts.size()) throw std::invalid_argument("one set of options per prompt is needed");
    if (n_seq > session.n_stream()) {
        throw std::invalid_argument(std::to_string(n_seq) + " prompts but the session holds " +
                                    std::to_string(session.n_stream()) + " sequences");
    }
    for (const auto & o : options) o.validate();
    for (const auto & p : prompts) {
        if (p.empty()) throw std::invalid_argument("empty prompt: at least one token is needed");
    }
    const Vocab & vocab = session.model().vocab();
    const int32_t n_vocab = int32_t(session.model().hparams().n_vocab);

    std::vector<SequenceState> seqs;
    std::vector<bool> active(prompts.size(), true);
    for (int s = 0; s < n_seq; ++s) seqs.emplace_back(options[size_t(s)]);

    // Takes a sampled token; returns whether the sequence goes on. A callback returning false stops it.
    auto accept = [&](int s, int32_t token) {
        std::string fresh;
        bool going = seqs[size_t(s)].accept(token, vocab, session.length(s), session.n_ctx(), fresh);
        if (!fresh.empty() && on_text && !on_text(s, fresh)) {
            seqs[size_t(s)].completion.finish_reason = "stop";
            going = false;
        }
        return going;
    };

    for (int s = 0; s < n_seq; ++s) {
        Completion & c = seqs[size_t(s)].completion;
        c.timings.n_prompt = int(prompts[size_t(s)].size());
        session.clear(s);
        if (options[size_t(s)].max_tokens == 0) {
            active[size_t(s)] = false;
            c.finish_reason = "length";
            continue;
        }
        const auto t0 = Clock::now();
        // Prompts differ in length, so each is prefilled as a batch of its own stream.
        std::vector<float> logits = session.evaluate(s, 1, prompts[size_t(s)], false, adapters);
        c.timings.prefill_seconds = seconds_since(t0);
        active[size_t(s)] = accept(s, seqs[size_t(s)].sample(logits.data(), n_vocab, session.model().vocab()));
    }

    // Joint decoding over the span of streams still active. A finished stream inside the span takes a
    // placeholder token that rewrites its own last row each step, so its cache never grows.
    std::vector<int> frozen(prompts.size());
    while (true) {
        int first = -1, last = -1;
        for (int s = 0; s < n_seq; ++s) {
            if (active[size_t(s)]) {
                if (first < 0) first = s;
                last = s;
            }
        }
        if (first < 0) break;
        std::vector<int32_t> tokens;
        for (int s = first; s <= last; ++s) {
            if (active[size_t(s)]) {
                tokens.push_back(seqs[size_t(s)].next);
            } else {
                frozen[size_t(s)] = session.length(s);
                session.truncate(s, std::max(0, frozen[size_t(s)] - 1));
                tokens.push_back(0);
            }
        }
        const auto t0 = Clock::now();
        std::vector<float> logits = session.evaluate(first, last - first + 1, tokens, false, adapters);
        const double elapsed = seconds_since(t0);
        for (int s = first; s <= last; ++s) {
            if (!active[size_t(s)]) {
                session.truncate(s, frozen[size_t(s)]);
                continue;
            }
            seqs[size_t(s)].completion.timings.decode_seconds += elapsed;
            float * row = logits.data() + size_t(s - first) * size_t(n_vocab);
            active[size_t(s)] = accept(s, seqs[size_t(s)].sample(row, n_vocab, session.model().vocab()));
        }
    }

    std::vector<Completion> results;
    for (int s = 0; s < n_seq; ++s) {
        const std::string rest = seqs[size_t(s)].finish();
        if (!rest.empty() && on_text) on_text(s, rest);
        results.push_back(std::move(seqs[size_t(s)].completion));
    }
    return results;
}

}  // namespace logo::core
