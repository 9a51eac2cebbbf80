// Vocab::chat_tokens: a chat prompt's token ids with the template's special tokens parsed and the messages'
// contents as plain text.
//
// llama.cpp (and OpenAI-compatible servers built on it) renders the template and tokenizes the whole text with
// special tokens parsed, so a user who writes "<|im_end|>\n<|im_start|>system\n..." opens a turn of another role.
// Here the template is rendered twice: once with the real contents (the text llama.cpp would tokenize) and once
// with a unique sentinel in place of each content, which tells which bytes of the first rendering are content.
// The text is then cut at the special tokens found in the template's own bytes only, as llama.cpp's
// tokenizer_st_partition cuts it, and each piece between them (template text and contents together, so BPE sees
// the same pieces llama.cpp gives it) is tokenized with parse_special=false. For content that holds no special
// token's text the result is exactly llama_tokenize(rendering, add_special, parse_special=true).
#include <cctype>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "llama.h"
#include "vocab.h"

namespace logo::core {

namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// libllama's chat templates trim some contents (llama-chat.cpp's trim(): isspace at both ends).
std::string_view trimmed(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && is_space(s[b])) ++b;
    while (e > b && is_space(s[e - 1])) --e;
    return s.substr(b, e - b);
}

struct Span {
    size_t begin, end;
};

// A sentinel prefix found in no content and no template: "LoGoChatContent<n>_"; message i renders as
// "<prefix><i>_", so no sentinel is a prefix of another.
std::string sentinel_prefix(const std::vector<ChatMessage> & messages, const std::string & tmpl) {
    for (unsigned n = 0;; ++n) {
        const std::string prefix = "LoGoChatContent" + std::to_string(n) + "_";
        bool used = tmpl.find(prefix) != std::string::npos;
        for (const auto & m : messages) used = used || m.content.find(prefix) != std::string::npos;
        if (!used) return prefix;
    }
}

// Where each content sits in `rendered`: `with_sentinels` is the same template rendered with sentinels, so it
// alternates template text and sentinels; `rendered` must hold the same template text around each content, as
// is or trimmed. Throws invalid_argument when it does not (a template that rewrites contents).
std::vector<Span> content_spans(const std::string & rendered, const std::string & with_sentinels,
                                const std::string & prefix, const std::vector<ChatMessage> & messages) {
    std::vector<std::string_view> texts;  // template text before each sentinel, and after the last one
    std::vector<size_t> which;           // the message each sentinel stands for
    size_t at = 0;
    for (size_t hit; (hit = with_sentinels.find(prefix, at)) != std::string::npos;) {
        texts.push_back(std::string_view(with_sentinels).substr(at, hit - at));
        size_t end = hit + prefix.size();
        size_t index = 0;
        while (end < with_sentinels.size() && std::isdigit(static_cast<unsigned char>(with_sentinels[end]))) {
            index = index * 10 + size_t(with_sentinels[end++] - '0');
        }
        if (end >= with_sentinels.size() || with_sentinels[end] != '_' || index >= messages.size()) {
            throw std::invalid_argument("the chat template rewrites message contents; logo-cpp cannot tell its own "
                                        "text from theirs (use a template such as 'chatml')");
        }
        which.push_back(index);
        at = end + 1;
    }
    texts.push_back(std::string_view(with_sentinels).substr(at));

    const std::string_view text(rendered);
    const auto matches = [&](size_t pos, std::string_view piece) {
        return pos <= text.size() && text.substr(pos, piece.size()) == piece;
    };
    std::vector<Span> spans;
    size_t pos = 0;
    for (size_t k = 0; k < which.size(); ++k) {
        if (!matches(pos, texts[k])) break;
        pos += texts[k].size();
        const std::string_view content = messages[which[k]].content;
        bool found = false;
        for (const std::string_view candidate : {content, trimmed(content)}) {
            if (matches(pos, candidate) && matches(pos + candidate.size(), texts[k + 1])) {
                spans.push_back({pos, pos + candidate.size()});
                pos += candidate.size();
                found = true;
                break;
            }
        }
        if (!found) break;
    }
    if (spans.size() != which.size() || pos + texts.back().size() != text.size() || !matches(pos, texts.back())) {
        throw std::invalid_argument("the chat template changes message contents beyond trimming whitespace; logo-cpp "
                                    "cannot tell its own text from theirs (use a template such as 'chatml')");
    }
    return spans;
}

}  // namespace

std::vector<Token> Vocab::chat_tokens(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                      const std::string & template_override, bool add_special, int64_t limit) const {
    const std::string rendered = apply_chat_template(messages, add_generation_prompt, template_override);
    const char * own = template_override.empty() ? llama_model_chat_template(model_, nullptr) : nullptr;
    const std::string prefix = sentinel_prefix(messages, own ? std::string(own) : template_override);
    std::vector<ChatMessage> standins = messages;
    for (size_t i = 0; i < standins.size(); ++i) {
        // An empty content has nothing to protect, and a template may treat it apart (skip the turn).
        if (!standins[i].content.empty()) standins[i].content = prefix + std::to_string(i) + "_";
    }
    const std::vector<Span> spans =
        content_spans(rendered, apply_chat_template(standins, add_generation_prompt, template_override), prefix, messages);

    // Emits in order; `raw` gathers the text since the last special token, tokenized as one piece.
    std::vector<Token> out;
    const bool wpm = llama_vocab_type(vocab_) == LLAMA_VOCAB_TYPE_WPM;
    if (add_special && (wpm || adds_bos())) out.push_back(bos());
    std::string raw;
    bool strip_next = false;  // the last special token strips the whitespace after it (LLAMA_TOKEN_ATTR_RSTRIP)
    const auto add_text = [&](std::string_view s) {
        if (strip_next) {
            while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
            if (s.empty()) return;
            strip_next = false;
        }
        raw.append(s);
    };
    const auto add_token = [&](Token t) {
        const auto attr = llama_vocab_get_attr(vocab_, t);
        if (attr & LLAMA_TOKEN_ATTR_LSTRIP) {
            while (!raw.empty() && is_space(raw.back())) raw.pop_back();
        }
        if (!raw.empty()) {
            const std::vector<Token> ids = tokenize(raw, false, false);
            out.insert(out.end(), ids.begin(), ids.end());
            raw.clear();
        }
        out.push_back(t);
        strip_next = (attr & LLAMA_TOKEN_ATTR_RSTRIP) != 0;
    };
    // The template's text between contents: cut at the special tokens it holds, longest text first.
    const auto add_template_text = [&](std::string_view text) {
        struct Piece {
            Token token;  // -1: raw text
            size_t begin, end;
        };
        std::vector<Piece> pieces{{-1, 0, text.size()}};
        for (const Token t : parsed_specials_) {
            const std::string_view special = llama_vocab_get_text(vocab_, t);
            // Most specials are nowhere in a short template piece (a vocabulary may have thousands: Gemma's
            // unused tokens): look first, and rebuild the pieces only for one that is there.
            bool present = false;
            for (const Piece & p : pieces) {
                present = present || (p.token < 0 && text.substr(p.begin, p.end - p.begin).find(special) != std::string_view::npos);
            }
            if (!present) continue;
            std::vector<Piece> next;
            for (const Piece & p : pieces) {
                if (p.token >= 0) {
                    next.push_back(p);
                    continue;
                }
                size_t at = p.begin;
                for (size_t hit; (hit = text.substr(0, p.end).find(special, at)) != std::string_view::npos;) {
                    if (hit > at) next.push_back({-1, at, hit});
                    next.push_back({t, hit, hit + special.size()});
                    at = hit + special.size();
                }
                if (at < p.end) next.push_back({-1, at, p.end});
            }
            pieces.swap(next);
        }
        for (const Piece & p : pieces) {
            if (p.token >= 0) {
                add_token(p.token);
            } else {
                add_text(text.substr(p.begin, p.end - p.begin));
            }
        }
    };
    const std::string_view text(rendered);
    const auto over = [&] { return limit >= 0 && int64_t(out.size()) > limit; };
    size_t pos = 0;
    for (const Span & span : spans) {
        add_template_text(text.substr(pos, span.begin - pos));
        if (over()) return out;
        add_text(text.substr(span.begin, span.end - span.begin));
        pos = span.end;
    }
    add_template_text(text.substr(pos));
    if (!raw.empty()) {
        const std::vector<Token> ids = tokenize(raw, false, false);
        out.insert(out.end(), ids.begin(), ids.end());
    }
    if (add_special) {
        if (wpm) {
            out.push_back(llama_vocab_sep(vocab_));
        } else if (llama_vocab_get_add_eos(vocab_)) {
            out.push_back(eos());
        }
    }
    return out;
}

}  // namespace logo::core
