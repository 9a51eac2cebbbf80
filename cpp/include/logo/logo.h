// logo-cpp's public C++ API: a Llama-family GGUF model, a pool of LoRA adapters, contexts that
// evaluate and generate (several sequences at once), and LoGo routing. No ggml and no Python types.
//
// Thread safety: a Model is read-only after loading and may be shared by any number of threads.
// An AdapterPool may be used by several threads at once; add() and remove() wait until no other
// thread is using it. A Context belongs to one thread at a time: using one Context from two threads
// at once throws logo::ConcurrentUse. Give each thread its own Context over the shared Model.
//
// Errors: logo::FileNotFound / logo::FileError (paths), logo::FormatError (a file that is not what is
// needed, naming the file and tensor), logo::ContextOverflow, std::invalid_argument (bad arguments).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "logo/errors.h"
#include "logo/types.h"

namespace logo {

namespace core {
class Model;
class Session;
class AdapterPool;
}  // namespace core

struct ModelParams {
    std::string device = "auto";  // "auto" (a GPU when the linked ggml has one), "cpu", "gpu", or a device name
    int n_threads = 0;            // 0: one per core; at most kMaxThreads
    bool use_mmap = true;
    // Repacked (interleaved) CPU layouts for the weight types that have them (Q4_0, Q4_K, IQ4_NL on x86),
    // as llama.cpp does by default; false is llama.cpp's --no-repack (use_extra_bufts = false).
    bool repack = true;
};

struct ModelInfo {
    std::string path;
    std::string arch;
    std::string device;
    int64_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, n_ctx_train = 0;
    int n_threads = 0;
    size_t weight_bytes = 0;
    Token bos = -1, eos = -1;
};

class Model {
public:
    explicit Model(const std::string & path, const ModelParams & params = {});
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const ModelInfo & info() const { return info_; }
    std::vector<Token> tokenize(const std::string & text, bool add_special = true, bool parse_special = false) const;
    std::string detokenize(const std::vector<Token> & tokens, bool remove_special = false, bool unparse_special = false) const;
    std::string token_piece(Token token) const;  // raw bytes of one token (may be a partial UTF-8 character)
    bool is_end_of_generation(Token token) const;
    // The model's chat template (or `chat_template`, a name or template libllama supports).
    std::string apply_chat_template(const std::vector<ChatMessage> & messages, bool add_generation_prompt = true,
                                    const std::string & chat_template = "") const;
    // The token ids of that prompt with every message's content as plain text: special tokens are parsed in the
    // template's own text only, so content holding "<|im_end|>" cannot open another turn. For content without
    // special-token text the ids equal tokenize(apply_chat_template(...), add_special, true). Throws
    // invalid_argument as apply_chat_template, or for a template that rewrites contents beyond trimming them.
    // With `limit` >= 0 it stops once it has more than `limit` ids and returns those: whether a conversation fits
    // a context costs limit + 1 tokens, not all of its own (llama_tokenize takes seconds on 30000 short messages).
    std::vector<Token> chat_tokens(const std::vector<ChatMessage> & messages, bool add_generation_prompt = true,
                                   const std::string & chat_template = "", bool add_special = true,
                                   int64_t limit = -1) const;

    // How many adapter matrices' calibration statistics this model has cached (diagnostics and tests:
    // statistics are computed once per matrix content, whichever pool or order it comes in).
    size_t calibration_cache_entries() const;
    // For a persistent cache of calibration statistics (logo_cpp's disk cache): every statistic this model
    // holds; what they depend on besides the model file's and the matrices' content (a printable string:
    // statistics version, generic prompts, device, weight layout); and statistics saved earlier under the same
    // identity, taken all or none: std::invalid_argument for a non-finite mean or std or a negative std. A
    // statistic this model already holds keeps its value.
    std::vector<CalibrationStat> calibration_stats() const;
    std::string calibration_identity() const;
    void add_calibration_stats(const std::vector<CalibrationStat> & stats) const;

    static std::vector<std::string> available_devices();
    static int default_thread_count();

private:
    friend class Context;
    friend class AdapterPool;
    friend class ContinuousBatch;
    std::shared_ptr<core::Model> impl_;
    ModelInfo info_;
};

struct AdapterInfo {
    struct Matrix {
        std::string weight;  // e.g. "blk.3.attn_q.weight"
        int layer = -1;
        std::string module;
        int rank = 0;
        float scale = 1.0f;  // alpha / rank, or 1 without alpha
        std::string type_a, type_b;
    };
    std::string name, path;
    float alpha = 0.0f;
    size_t bytes = 0;
    std::vector<Matrix> matrices;
};

class AdapterPool {
public:
    explicit AdapterPool(const Model & model);
    ~AdapterPool();
    AdapterPool(const AdapterPool &) = delete;
    AdapterPool & operator=(const AdapterPool &) = delete;

    // Loads all files or none (the pool is unchanged on error); empty names take the file's stem.
    std::vector<std::string> add(const std::vector<std::string> & paths, const std::vector<std::string> & names = {});
    // Adapters from memory, with the same checks as files (names, shapes against the model, finite
    // values) and the same all-or-nothing rule; the data are copied, the caller keeps its buffers.
    std::vector<std::string> add_tensors(const std::vector<AdapterData> & adapters);
    void remove(const std::string & name);
    std::vector<std::string> names() const;
    int index_of(const std::string & name) const;  // -1 when absent
    size_t size() const;
    size_t bytes() const;
    AdapterInfo info(size_t index) const;

private:
    friend class Context;
    friend class ContinuousBatch;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct ContextParams {
    int n_ctx = 2048;   // positions per sequence
    int n_seq = 1;      // sequences decoded together
    int n_batch = 512;  // tokens per sequence per graph evaluation
};

// Per-thread state over a shared Model: the KV cache of n_seq sequences and the compute buffers.
class Context {
public:
    Context(const Model & model, const ContextParams & params = {});
    ~Context();
    Context(const Context &) = delete;
    Context & operator=(const Context &) = delete;

    int n_ctx() const;
    int n_seq() const;
    int64_t n_vocab() const;
    int length(int seq) const;
    void clear(int seq);
    void clear_all();
    void truncate(int seq, int length);

    // Appends tokens to sequences [first_seq, first_seq + n_seq) (sequence-major, the same count for
    // each) and returns logits, row-major [n_outputs][n_vocab]: every token's, or each sequence's last.
    // With a pool, `mixtures` holds one mixture for all sequences or one per sequence of the context.
    // fold = requantize / upcast computes with the mixture folded into requantized / Q8_0 weights (see
    // FoldMode: lossy on quantized bases; one mixture only), e.g. to measure that error against fold = exact.
    std::vector<float> evaluate(int first_seq, int n_seq, const std::vector<Token> & tokens, bool all_logits = false,
                                const AdapterPool * pool = nullptr, const std::vector<Mixture> & mixtures = {},
                                FoldMode fold = FoldMode::exact);

    // The residual stream entering block `layer` at the last token (the LoGo probe vector), [n_embd].
    std::vector<float> block_input(int seq, const std::vector<Token> & tokens, int layer);
    // The residual stream entering each of `layers` (ascending, distinct) at every token, in one
    // forward pass: one row-major [n_tokens][n_embd] array per layer. Sequence `seq` is left as it was.
    std::vector<std::vector<float>> hidden_states(int seq, const std::vector<Token> & tokens, const std::vector<int> & layers);

    // Generates for each prompt in its own sequence (0..n-1), decoding them together; sequence i's
    // sampler is seeded with options.sampling.seed + i. A single prompt generating at least 16 tokens
    // over F32/F16/BF16 weights gets its mixture folded into the weights (decodes at base speed);
    // options.fold = requantize or upcast folds one mixture on any base (see FoldMode).
    std::vector<Completion> generate(const std::vector<std::vector<Token>> & prompts, const GenerateOptions & options,
                                     const AdapterPool * pool = nullptr, const std::vector<Mixture> & mixtures = {},
                                     const TextCallback & on_text = {});

    // The adapted weights as `fold` would fold `mixture` into them (FoldMode; exact folds only F32/F16/BF16
    // weights and throws std::invalid_argument on others), in the model's order of adapted weights. What a
    // merged-model exporter needs, and what tests compare with an independent reference.
    std::vector<FoldedWeight> folded_weights(const AdapterPool & pool, const Mixture & mixture,
                                             FoldMode fold = FoldMode::requantize);

    // LoGo: one probe evaluation on sequence `seq` (cleared first) scores every pool adapter.
    Routing route(int seq, const AdapterPool & pool, const std::vector<Token> & tokens, const RouterOptions & options = {});

private:
    std::shared_ptr<core::Model> model_;
    std::unique_ptr<core::Session> session_;
    struct Guard;
    std::unique_ptr<Guard> guard_;
};

// LoGo end to end over one Context: route a prompt, then generate with the chosen mixture.
class Router {
public:
    Router(Context & context, const AdapterPool & pool, const RouterOptions & options = {});
    Routing route(const std::vector<Token> & prompt);
    // Returns the completion and the routing that produced it.
    std::pair<Completion, Routing> generate(const std::vector<Token> & prompt, const GenerateOptions & options,
                                            const TextCallback & on_text = {});

private:
    Context & context_;
    const AdapterPool & pool_;
    RouterOptions options_;
};

// The generic, unlabeled prompts that calibrated signals are normalised over (shipped with the library).
std::vector<std::string> calibration_prompts();

// Checks that `path` is a GGUF file the loaders can read, reading only its header: it exists, has the GGUF
// magic and a supported version (2 or 3), its header parses, and every tensor's data lies inside the file.
// Throws FileNotFound / FileError / FormatError with the messages Model and AdapterPool give (naming the
// file and the version, or the truncated tensor with the bytes it needs and the bytes present). Says nothing
// of what the file holds: Model and AdapterPool check that.
void check_gguf_file(const std::string & path);

// Names of pool adapters and their weights, e.g. for printing a Routing.
std::vector<std::pair<std::string, float>> describe(const Routing & routing, const AdapterPool & pool);

}  // namespace logo

#include "logo/batch.h"  // ContinuousBatch: continuous batching for servers
