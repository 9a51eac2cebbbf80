// Tokenization: the input's first byte picks a vocabulary from LOGO_FUZZ_VOCABS (':'-separated model files:
// SentencePiece with byte fallback, GPT2 byte-level BPE) and the flags; the rest is the text, raw bytes.
// The ids go back through detokenize and token pieces, and the text through the chat template.
#include "common.h"

namespace {

std::vector<std::unique_ptr<logo::Model>> & vocabs() {
    static std::vector<std::unique_ptr<logo::Model>> all;
    return all;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    fuzz::quiet_logs();
    for (const std::string & path : fuzz::split(fuzz::env("LOGO_FUZZ_VOCABS"), ':')) {
        vocabs().push_back(std::make_unique<logo::Model>(path, fuzz::cpu_params()));
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size == 0) return 0;
    const uint8_t control = data[0];
    const logo::Model & model = *vocabs()[(control >> 4) % vocabs().size()];
    const std::string text(reinterpret_cast<const char *>(data + 1), size - 1);
    const bool add_special = control & 1, parse_special = control & 2;
    try {
        const std::vector<logo::Token> ids = model.tokenize(text, add_special, parse_special);
        model.detokenize(ids, control & 4, control & 8);
        for (logo::Token t : ids) model.token_piece(t);
    } catch (const std::invalid_argument &) {
        // bytes libllama's tokenizer refuses (named in the message)
    }
    try {
        model.apply_chat_template({{"user", text}, {"assistant", text}}, control & 4);
    } catch (const std::invalid_argument &) {
        // no usable template
    }
    return 0;
}
