// Model loading: the input is a whole GGUF file. A file that loads is then run: a short evaluation of two
// sequences, a block input, and a greedy generation, so hyperparameters that pass the loader's checks
// are exercised by the graph too.
#include "common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const std::string & path = fuzz::write_input(data, size);
    try {
        logo::ModelParams params = fuzz::cpu_params();
        params.use_mmap = size % 2 == 0;  // both ways of placing weights
        logo::Model model(path, params);
        const logo::ModelInfo & info = model.info();
        // Keep one execution cheap: weights come from the input, so they are small, but a header may
        // claim a long context; the run below needs 8 positions.
        logo::Context context(model, {/*n_ctx=*/8, /*n_seq=*/2, /*n_batch=*/4});
        std::vector<logo::Token> tokens = model.tokenize("the cat", true, false);
        tokens.resize(3, info.bos >= 0 && info.bos < info.n_vocab ? info.bos : 0);
        for (auto & t : tokens) t = t < 0 || t >= info.n_vocab ? 0 : t;
        context.evaluate(0, 2, {tokens[0], tokens[1], tokens[2], tokens[2], tokens[1], tokens[0]}, true);
        context.block_input(0, tokens, int(info.n_layer) - 1);
        logo::GenerateOptions options;
        options.max_tokens = 2;
        options.sampling.temperature = 0.0f;
        context.generate({tokens}, options);
        model.detokenize(tokens);
    } catch (const std::exception &) {
        // A clean refusal (FormatError, FileError, invalid_argument, runtime_error: out of memory).
    }
    return 0;
}
