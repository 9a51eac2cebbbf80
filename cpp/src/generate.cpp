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
    sampling.validate();
}

}  // namespace logo

namespace logo::core {


namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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

// Accumulates generated text, finds stop strings, and releases only text that can no longer change:
// neither a partial UTF-8 character nor the beginning of a stop string.
struct TextStream {
    const std::vector<std::string> * stop;
    std::string text;
    size_t released = 0;
    bool stopped = false;

    // Returns the newly final text.
    std::string push(const std::string & piece) {
        text += piece;
        size_t limit = complete_utf8_prefix(text);
        for (const auto & s : *stop) {
            const size_t at = text.find(s, released > s.size() ? released - s.size() : 0);
            if (at != std::string::npos) {
                text.resize(at);
                stopped = true;
                limit = at;
            }
        }
        if (!stopped) {
            // Hold back a suffix that could still grow into a stop string.
            for (const auto & s : *stop) {
                for (size_t k = std::min(s.size() - 1, text.size()); k > 0; --k) {
                    if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                        limit = std::min(limit, text.size() - k);
                        break;
                    }
                }
            }
        }
        limit = std::max(limit, released);
        std::string out = text.substr(released, limit - released);
        released = limit;
        return out;
    }

    std::string flush() {
        std::string out = text.substr(released);
        released = text.size();
        return out;
    }
};

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

    std::vector<Completion> results(prompts.size());
    std::vector<Sampler> samplers;
    std::vector<TextStream> streams;
    std::vector<int32_t> next(prompts.size());
    std::vector<bool> active(prompts.size(), true);
    for (int s = 0; s < n_seq; ++s) {
        samplers.emplace_back(options[size_t(s)].sampling);
        streams.push_back(TextStream{&options[size_t(s)].stop, {}, 0, false});
    }

    // Takes a sampled token; returns whether the sequence goes on.
    auto accept = [&](int s, int32_t token) {
        Completion & c = results[size_t(s)];
        const GenerateOptions & o = options[size_t(s)];
        if (!o.ignore_eos && vocab.is_end_of_generation(token)) {
            c.finish_reason = "eos";
            return false;
        }
        c.tokens.push_back(token);
        c.timings.n_generated = int(c.tokens.size());
        const std::string fresh = streams[size_t(s)].push(vocab.token_piece(token, false));
        if (!fresh.empty() && on_text && !on_text(s, fresh)) {
            c.finish_reason = "stop";
            return false;
        }
        if (streams[size_t(s)].stopped) {
            c.finish_reason = "stop";
            return false;
        }
        if (int(c.tokens.size()) >= o.max_tokens) {
            c.finish_reason = "length";
            return false;
        }
        if (session.length(s) + 1 > session.n_ctx()) {
            c.finish_reason = "length";  // the context is full
            return false;
        }
        next[size_t(s)] = token;
        return true;
    };

    for (int s = 0; s < n_seq; ++s) {
        Completion & c = results[size_t(s)];
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
        active[size_t(s)] = accept(s, samplers[size_t(s)].sample(logits.data(), n_vocab));
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
                tokens.push_back(next[size_t(s)]);
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
            results[size_t(s)].timings.decode_seconds += elapsed;
            const float * row = logits.data() + size_t(s - first) * size_t(n_vocab);
            active[size_t(s)] = accept(s, samplers[size_t(s)].sample(row, n_vocab));
        }
    }

    for (int s = 0; s < n_seq; ++s) {
        const std::string rest = streams[size_t(s)].flush();
        if (!rest.empty() && on_text) on_text(s, rest);
        results[size_t(s)].text = streams[size_t(s)].text;
    }
    return results;
}

}  // namespace logo::core
