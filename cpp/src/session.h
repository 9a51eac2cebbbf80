// Per-run state over a shared Model: the KV cache of n_stream independent sequences, the scheduler
// and its compute buffers. One Session is used by one thread at a time.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "ggml-backend.h"
#include "graph.h"
#include "kv_cache.h"
#include "logo/logo.h"
#include "model.h"

namespace logo::core {

// Appends operations to a probe graph after the probe vectors of the probed blocks (one [n_embd, 1] tensor per
// block) and returns the tensors to read back. LoGo's scoring runs this way, in the probe's own evaluation.
// The context is a GraphArena's: a tail is given room for kLayerRoom tensors, and one that loops (per
// layer, per adapter) calls graph_reserve(ctx, n) in each iteration.
using GraphTail = std::function<std::vector<ggml_tensor *>(ggml_context *, const std::vector<ggml_tensor *> & block_inputs)>;

// Which probe vector a probe hands its tail, per probed block: the residual at the last token (the paper's),
// or the mean over the probed tokens of the module's input, RMSNorm(h_t) * norm weight (the first token left
// out when it is BOS, whose state is the same for every prompt).
enum class ProbeAt { last_token, token_mean };

// n_ctx positions per sequence, n_seq sequences decoded together, n_batch tokens per evaluation.
using SessionOptions = ContextParams;

// Asked before each n_batch chunk of a long single-stream evaluation; true stops it (Session::evaluate throws
// Interrupted). Called on the evaluating thread: it reads a flag that another thread may set.
using InterruptCheck = std::function<bool()>;

// Thrown by Session::evaluate when its InterruptCheck said stop. The stream's cache then holds the chunks
// evaluated so far: the caller clears or truncates it.
struct Interrupted : std::exception {
    const char * what() const noexcept override { return "evaluation interrupted between two chunks"; }
};

class Session {
public:
    Session(std::shared_ptr<const Model> model, const SessionOptions & options);
    ~Session();
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    const Model & model() const { return *model_; }
    int n_ctx() const { return cache_.n_ctx; }
    int n_stream() const { return cache_.n_stream; }
    int length(int stream) const;
    void clear(int stream);
    void truncate(int stream, int length);  // forget the tokens past `length`
    void clear_all();
    // Stream `to` takes a copy of stream `from`'s cache (its rows and length), computed on the device;
    // continuous batching uses it to keep the running sequences in consecutive streams.
    void copy_stream(int from, int to);

    // Appends n_per_stream tokens to each of n_stream consecutive streams starting at first_stream
    // (tokens laid out stream-major) and evaluates them in one graph. Returns logits, row-major
    // [n_outputs][n_vocab]: every token's when all_outputs, else each stream's last token's.
    // Long inputs are split into evaluations of at most n_batch tokens per stream; with one stream,
    // `interrupted` (when set) is asked before each of them, and a true answer throws Interrupted.
    std::vector<float> evaluate(int first_stream, int n_stream, const std::vector<int32_t> & tokens,
                                bool all_outputs, const LowRankTerms * adapters = nullptr,
                                const InterruptCheck & interrupted = {});

    // Runs the blocks before `layer` over one stream's tokens (appended to its cache) and returns the
    // residual stream entering `layer` at the last token: the LoGo probe vector, [n_embd].
    // The stream's cache is left as it was (the probe fills only the blocks before `layer`).
    std::vector<float> block_input(int stream, const std::vector<int32_t> & tokens, int layer,
                                   const LowRankTerms * adapters = nullptr);

    // Builds a graph with `build` (which creates its tensors in the given context, calling graph_reserve
    // before each unit of work, and returns the outputs to compute in order) and computes it with this
    // session's backends: one-off work on tensors on the model's device, such as folding a mixture.
    void compute(const std::function<std::vector<ggml_tensor *>(ggml_context *)> & build);

    // The residual stream entering each of `layers` (ascending, distinct, in [0, n_layer)) at every
    // token: one [n_tokens][n_embd] row-major array per layer. The stream's cache is left as it was.
    std::vector<std::vector<float>> hidden_states(int stream, const std::vector<int32_t> & tokens,
                                                  const std::vector<int> & layers);

    // Runs the blocks before the last of `layers` (ascending, distinct) over one stream's tokens, hands a probe
    // vector per block of `layers` to `tail` in the same graph, and returns the tail's outputs: the residual
    // entering the block at the last token, or (token_mean) the mean over the tokens of RMSNorm(h_t) * w with w
    // the block's entry of `norm_weights` ([n_embd] each). The stream's cache is left as it was.
    std::vector<std::vector<float>> probe(int stream, const std::vector<int32_t> & tokens, const std::vector<int> & layers,
                                          const LowRankTerms * adapters, const GraphTail & tail,
                                          ProbeAt at = ProbeAt::last_token,
                                          const std::vector<ggml_tensor *> & norm_weights = {});

private:
    std::shared_ptr<const Model> model_;
    KvCache cache_;
    int n_batch_;
    std::vector<ggml_backend_t> backends_;
    ggml_backend_sched_t sched_ = nullptr;
    size_t sched_size_ = 0;  // nodes + leafs the scheduler's hash set holds
    GraphArena arena_;

    // Makes sure the scheduler can take a graph of `graph_size` nodes + leafs (a new, larger one if not).
    void fit_scheduler(size_t graph_size);

    // What one evaluation keeps of the residual entering each block of `layers` (one stream only).
    struct Capture {
        enum Mode { all_tokens, last_token, token_sum, token_mean } mode = all_tokens;
        std::vector<int> layers;
        bool skip_first = false;                  // leave this chunk's first token out of sums and means
        std::vector<ggml_tensor *> norm_weights;  // token_sum/token_mean: RMSNorm each token, times these
        const std::vector<float> * carry = nullptr;  // token_mean: sums of earlier chunks, [layers][n_embd]
        int count = 1;                            // token_mean: the number of tokens summed in all
    };

    void check_tokens(int first_stream, int n_stream, const std::vector<int32_t> & tokens) const;
    // One evaluation of at most n_batch tokens per stream. With stop_layer < n_layer it returns the
    // block input, or the outputs of `tail` applied to the captured vectors; else the logits. Without a
    // tail the captured vectors follow, one array each ([n_embd] per token, or one [n_embd] sum or mean).
    std::vector<std::vector<float>> run_chunk(int first_stream, int n_stream, const int32_t * tokens, int n_per_stream,
                                              bool all_outputs, const LowRankTerms * adapters, int stop_layer,
                                              const GraphTail * tail = nullptr, const Capture * capture = nullptr);
};

}  // namespace logo::core
