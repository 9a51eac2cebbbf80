#include "vocab.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <stdexcept>
#include <unordered_map>

#include "ggml_log.h"
#include "gguf_file.h"
#include "logo/errors.h"
#include "llama.h"

namespace logo::core {

namespace {

// Where `text` holds a 4-byte UTF-8 form of a code point beyond U+10FFFF ("" if nowhere): libllama's
// UTF-8 decoder accepts those, and its byte-level BPE then throws when it re-encodes them.
std::string beyond_unicode(const std::string & text) {
    for (size_t i = 0; i + 3 < text.size(); ++i) {
        const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
        if ((byte(0) & 0xF8) != 0xF0) continue;
        if ((byte(1) & 0xC0) != 0x80 || (byte(2) & 0xC0) != 0x80 || (byte(3) & 0xC0) != 0x80) continue;
        const uint32_t cpt = (uint32_t(byte(0) & 0x07) << 18) | (uint32_t(byte(1) & 0x3F) << 12) |
                             (uint32_t(byte(2) & 0x3F) << 6) | uint32_t(byte(3) & 0x3F);
        if (cpt <= 0x10FFFF) continue;
        char out[160];
        std::snprintf(out, sizeof(out), "bytes 0x%02X 0x%02X 0x%02X 0x%02X at offset %zu encode U+%X, beyond Unicode's U+10FFFF",
                      byte(0), byte(1), byte(2), byte(3), i, cpt);
        return out;
    }
    return "";
}

// A token's text for an error message: printable ASCII as is, other bytes as \xHH, at most 40 bytes.
std::string printable(const std::string & text) {
    std::string out;
    for (size_t i = 0; i < text.size() && i < 40; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c < 0x7F && c != '\\') {
            out += char(c);
        } else {
            char hex[8];
            std::snprintf(hex, sizeof(hex), "\\x%02X", c);
            out += hex;
        }
    }
    return text.size() > 40 ? out + "..." : out;
}

// libllama maps every token's text to its id and asserts that no two texts are equal (GGML_ASSERT in
// llama_vocab::impl::load: the process aborts). It renames an empty entry i to "[EMPTY_i]" first, so the
// same renaming applies here. A key of the wrong type is left to libllama, which throws for it.
void check_distinct_tokens(const GgufFile & file) {
    const int64_t key = gguf_find_key(file.gguf, "tokenizer.ggml.tokens");
    if (key < 0 || gguf_get_kv_type(file.gguf, key) != GGUF_TYPE_ARRAY ||
        gguf_get_arr_type(file.gguf, key) != GGUF_TYPE_STRING) {
        return;
    }
    const size_t n = gguf_get_arr_n(file.gguf, key);
    std::unordered_map<std::string, size_t> first;
    first.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        std::string text = gguf_get_arr_str(file.gguf, key, i);
        if (text.empty()) text = "[EMPTY_" + std::to_string(i) + "]";
        const auto [at, fresh] = first.emplace(text, i);
        if (!fresh) {
            throw FormatError("'" + file.path + "': tokenizer.ggml.tokens has entry " + std::to_string(i) + " equal to entry " +
                              std::to_string(at->second) + " (\"" + printable(text) +
                              "\"); every token of a vocabulary must be distinct");
        }
    }
}

}  // namespace

Vocab::Vocab(const GgufFile & file) : path_(file.path) {
    check_distinct_tokens(file);
    const std::string & path = file.path;
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    {
        // libllama describes every vocabulary it loads on the log (one per model here) and says there why it
        // cannot read one: its lines are kept out of the user's terminal, the reason goes into our message.
        LogCapture log;
        model_ = llama_model_load_from_file(path.c_str(), params);
        if (!model_) {
            const std::string libllama_says = log.take_errors();
            throw FormatError("'" + path + "': libllama could not read the tokenizer vocabulary" +
                              (libllama_says.empty() ? "" : " (libllama: " + libllama_says + ")"));
        }
    }
    vocab_ = llama_model_get_vocab(model_);
    try {
        check_special_tokens();
    } catch (...) {
        llama_model_free(model_);
        throw;
    }
    for (Token t = 0; t < llama_vocab_n_tokens(vocab_); ++t) {
        if (llama_vocab_is_eog(vocab_, t)) eog_.push_back(t);
        const auto attr = llama_vocab_get_attr(vocab_, t);
        const char * text = llama_vocab_get_text(vocab_, t);
        if ((attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_UNKNOWN)) && text && *text) parsed_specials_.push_back(t);
    }
    // llama.cpp's partition order (llama_vocab::impl::tokenizer_st_partition): longest text first.
    std::stable_sort(parsed_specials_.begin(), parsed_specials_.end(), [this](Token a, Token b) {
        return std::strlen(llama_vocab_get_text(vocab_, a)) > std::strlen(llama_vocab_get_text(vocab_, b));
    });
}

void Vocab::check_special_tokens() const {
    // libllama asserts (the process aborts) when it tokenizes with special tokens and the vocabulary asks
    // for a BOS, EOS or separator token it does not have (an id missing or out of range falls back to a
    // default, which a small vocabulary may not hold). A WordPiece vocabulary always adds BOS and SEP.
    const bool wpm = llama_vocab_type(vocab_) == LLAMA_VOCAB_TYPE_WPM;
    const struct {
        bool added;
        llama_token id;
        const char * name;
        const char * key;
    } needed[] = {
        {wpm || llama_vocab_get_add_bos(vocab_), llama_vocab_bos(vocab_), "BOS", "tokenizer.ggml.bos_token_id"},
        {!wpm && llama_vocab_get_add_eos(vocab_), llama_vocab_eos(vocab_), "EOS", "tokenizer.ggml.eos_token_id"},
        {wpm, llama_vocab_sep(vocab_), "separator", "tokenizer.ggml.seperator_token_id"},
    };
    for (const auto & n : needed) {
        if (n.added && n.id == LLAMA_TOKEN_NULL) {
            throw FormatError("'" + path_ + "': the tokenizer adds a " + n.name + " token to every prompt but has none: key '" +
                              n.key + "' is missing or outside the " + std::to_string(llama_vocab_n_tokens(vocab_)) +
                              " tokens");
        }
    }
}

Vocab::~Vocab() {
    if (model_) llama_model_free(model_);
}

std::vector<Token> Vocab::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    if (text.size() > size_t(INT32_MAX) - 8) {
        throw std::invalid_argument("text of " + std::to_string(text.size()) + " bytes is too long to tokenize (at most 2^31 - 9)");
    }
    // A token never spans less than one byte, so bytes + specials bound the count.
    std::vector<Token> tokens(text.size() + 8);
    int32_t n = 0;
    try {
        n = llama_tokenize(vocab_, text.data(), int32_t(text.size()), tokens.data(), int32_t(tokens.size()),
                           add_special, parse_special);
        if (n < 0) {
            tokens.resize(size_t(-int64_t(n)));
            n = llama_tokenize(vocab_, text.data(), int32_t(text.size()), tokens.data(), int32_t(tokens.size()),
                               add_special, parse_special);
        }
    } catch (const std::exception & e) {
        // libllama's C API lets C++ exceptions out (llama-cpp-python aborts on them); say what it refused.
        const std::string where = beyond_unicode(text);
        throw std::invalid_argument("'" + path_ + "': the tokenizer cannot take this text" +
                                    (where.empty() ? std::string() : ": " + where) + " (libllama: " + e.what() + ")");
    }
    if (n < 0) throw std::runtime_error("tokenization failed");
    tokens.resize(size_t(n));
    return tokens;
}

std::string Vocab::detokenize(const std::vector<Token> & tokens, bool remove_special, bool unparse_special) const {
    for (Token t : tokens) {
        if (t < 0 || t >= n_tokens()) {
            throw std::invalid_argument("token id " + std::to_string(t) + " is out of range [0, " +
                                        std::to_string(n_tokens()) + ")");
        }
    }
    std::string text(tokens.size() * 8 + 16, '\0');
    int32_t n = 0;
    try {
        n = llama_detokenize(vocab_, tokens.data(), int32_t(tokens.size()), text.data(), int32_t(text.size()),
                             remove_special, unparse_special);
        if (n < 0) {
            text.resize(size_t(-int64_t(n)));
            n = llama_detokenize(vocab_, tokens.data(), int32_t(tokens.size()), text.data(), int32_t(text.size()),
                                 remove_special, unparse_special);
        }
    } catch (const std::exception & e) {
        throw std::invalid_argument("'" + path_ + "': the tokenizer cannot detokenize these ids (libllama: " + e.what() + ")");
    }
    if (n < 0) throw std::runtime_error("detokenization failed");
    text.resize(size_t(n));
    return text;
}

std::string Vocab::token_piece(Token token, bool special) const {
    try {
        char buf[256];
        int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, special);
        if (n < 0) {
            std::string big(size_t(-int64_t(n)), '\0');
            n = llama_token_to_piece(vocab_, token, big.data(), int32_t(big.size()), 0, special);
            big.resize(size_t(n < 0 ? 0 : n));
            return big;
        }
        return std::string(buf, size_t(n));
    } catch (const std::exception & e) {
        throw std::invalid_argument("'" + path_ + "': the tokenizer has no text for token " + std::to_string(token) +
                                    " (libllama: " + e.what() + ")");
    }
}

int32_t Vocab::n_tokens() const { return llama_vocab_n_tokens(vocab_); }
Token Vocab::bos() const { return llama_vocab_bos(vocab_); }
Token Vocab::eos() const { return llama_vocab_eos(vocab_); }
bool Vocab::is_end_of_generation(Token token) const { return llama_vocab_is_eog(vocab_, token); }
bool Vocab::adds_bos() const { return llama_vocab_get_add_bos(vocab_); }

std::string Vocab::apply_chat_template(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                       const std::string & template_override) const {
    const char * tmpl = template_override.empty() ? llama_model_chat_template(model_, nullptr)
                                                  : template_override.c_str();
    if (!tmpl) {
        throw std::invalid_argument("'" + path_ + "' has no chat template (tokenizer.chat_template); "
                                    "pass chat_template= explicitly");
    }
    std::vector<llama_chat_message> chat;
    size_t total = 0;
    for (const auto & m : messages) {
        chat.push_back({m.role.c_str(), m.content.c_str()});
        total += m.role.size() + m.content.size();
    }
    std::string out(2 * total + 256, '\0');
    int32_t n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_generation_prompt, out.data(),
                                          int32_t(out.size()));
    if (n > int32_t(out.size())) {
        out.resize(size_t(n));
        n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_generation_prompt, out.data(),
                                      int32_t(out.size()));
    }
    if (n < 0) {
        throw std::invalid_argument("the chat template is not one libllama supports; pass chat_template= with a "
                                    "supported template name (e.g. 'chatml', 'llama3')");
    }
    out.resize(size_t(n));
    return out;
}

}  // namespace logo::core
