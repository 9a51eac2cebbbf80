// Tokenization, detokenization and chat templates, served by libllama from the same GGUF file.
// libllama loads only the vocabulary (vocab_only); the forward pass is ours.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "logo/types.h"

struct llama_model;
struct llama_vocab;

namespace logo::core {

struct GgufFile;


class Vocab {
public:
    // Loads the vocabulary of `file` through libllama. Throws FormatError, naming the file and the key, for
    // what libllama would abort on (two equal entries of tokenizer.ggml.tokens) and when it cannot read it.
    explicit Vocab(const GgufFile & file);
    ~Vocab();
    Vocab(const Vocab &) = delete;
    Vocab & operator=(const Vocab &) = delete;

    std::vector<Token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string detokenize(const std::vector<Token> & tokens, bool remove_special, bool unparse_special) const;
    std::string token_piece(Token token, bool special) const;  // raw bytes, possibly a partial UTF-8 sequence

    int32_t n_tokens() const;
    Token bos() const;
    Token eos() const;
    bool is_end_of_generation(Token token) const;
    const std::vector<Token> & end_of_generation_tokens() const { return eog_; }  // ascending
    bool adds_bos() const;

    // Applies the model's chat template (or `template_override`); throws invalid_argument if unsupported.
    std::string apply_chat_template(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                    const std::string & template_override) const;

    // The token ids of the chat prompt apply_chat_template renders, with the message contents as plain text:
    // the template's own text has its special tokens parsed (<|im_start|>, <|eot_id|>, ...), a message's
    // content never does, so a "<|im_end|>" a user writes stays the characters it is. For content holding no
    // special token's text the ids equal llama_tokenize(rendered, add_special, parse_special=true), what
    // llama.cpp's server does. Defined in chat_tokens.cpp. Throws invalid_argument as apply_chat_template, and
    // when the template changes a message's content other than by trimming whitespace (it cannot be located).
    // With `limit` >= 0 it stops once it has more than `limit` ids and returns those (a caller that only needs
    // to know whether the prompt fits a context then pays for limit + 1 tokens, not for the whole conversation).
    std::vector<Token> chat_tokens(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                   const std::string & template_override, bool add_special, int64_t limit = -1) const;

private:
    void check_special_tokens() const;  // FormatError for a BOS/EOS/SEP the tokenizer adds but lacks

    llama_model * model_ = nullptr;
    const llama_vocab * vocab_ = nullptr;
    std::string path_;
    std::vector<Token> eog_;  // every end-of-generation token (EOS, EOT, <|im_end|>, ...), for ignore_eos
    // Control and unknown tokens, longest text first: the tokens llama_tokenize matches in text only when
    // asked to parse special tokens (user-defined ones it always matches), for chat_tokens.
    std::vector<Token> parsed_specials_;
};

}  // namespace logo::core
