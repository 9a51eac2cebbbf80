// The forward graph of the Llama family (llama, qwen2, qwen3), for several sequences at once.
#pragma once

#include <unordered_map>
#include <vector>

#include "ggml.h"
#include "graph_arena.h"
#include "kv_cache.h"
#include "model.h"

namespace logo::core {

// Low-rank terms added to one weight's output: y += B (A x), the adapter scales folded into the pair.
// a: [n_in, rows, n_mix], shared by the weights of a block that read the same input (one matmul serves
// all of them); this weight's rows are [a_row0, a_row0 + rank). b: [rank, n_out, n_mix]. n_mix is 1
// (one mixture for every sequence) or the session's number of sequences (one mixture per sequence; a
// batch uses its streams' slice).
struct LowRankTerm {
    ggml_tensor * a = nullptr;
    int64_t a_row0 = 0;
    ggml_tensor * b = nullptr;
    // W + B A precomputed (a "folded" mixture): when set, the linear map uses it instead of W and a, b.
    ggml_tensor * folded = nullptr;
    // Set when one pair (n_mix = 1) serves sequences with different mixtures: [rows of a, 1, n_sequences],
    // each sequence's weight for every rank slot (0 for adapters it did not select).
    ggml_tensor * slot_weights = nullptr;
    // With slot_weights: multiply each stream by the shared pair on its own (the pair broadcast over streams)
    // rather than all rows at once, so a stream's result does not depend on how many streams the batch holds
    // (continuous batching, slot_mixtures.h: ggml may pick another kernel for a product over more rows).
    bool per_stream = false;
};
using LowRankTerms = std::unordered_map<const ggml_tensor *, LowRankTerm>;

// The tokens of one evaluation: n_per_stream new tokens for each of n_stream consecutive streams
// starting at first_stream, laid out stream-major.
struct BatchShape {
    int first_stream = 0;
    int n_stream = 1;
    int n_per_stream = 1;
    int n_kv = 0;         // cache rows attended per stream (>= every stream's length after this batch)
    bool all_outputs = false;  // logits for every token, or only each stream's last token
    int n_tokens() const { return n_stream * n_per_stream; }
    int n_outputs() const { return all_outputs ? n_tokens() : n_stream; }
};

struct GraphInputs {
    ggml_tensor * tokens = nullptr;       // I32 [n_tokens]
    ggml_tensor * positions = nullptr;    // I32 [n_tokens]
    ggml_tensor * cache_rows = nullptr;   // I64 [n_tokens]: where each token's K and V are written
    ggml_tensor * mask = nullptr;         // F16 [n_kv, n_per_stream, 1, n_stream]
    ggml_tensor * output_rows = nullptr;  // I32 [n_outputs]; null when every token is an output
};

struct ForwardGraph {
    // The graph's roots in the order they must be expanded: each layer's cache writes come before
    // the attention that reads the cache, then the result (logits or block_input). See graph_arena.h.
    std::vector<ggml_tensor *> outputs;
    GraphInputs inputs;
    ggml_tensor * logits = nullptr;        // [n_vocab, n_outputs], when the graph runs to the end
    ggml_tensor * block_input = nullptr;   // [n_embd, n_outputs], residual entering block `stop_layer`
    // The residual entering each block listed in `capture`, at every token: [n_embd, n_tokens] each
    // (not marked as outputs: the caller reads them whole or builds on them).
    std::vector<ggml_tensor *> captured;
};

// Builds the forward pass's tensors in `ctx` (a GraphArena's: it throws GraphArenaFull when short of room,
// and GraphArena::build_graph makes the cgraph from `outputs`). With stop_layer in [0, n_layer) the graph
// stops at the residual stream entering that block (the LoGo probe vector); with stop_layer = n_layer it
// produces logits.
// `capture` lists blocks (each <= stop_layer, ascending) whose input residual is also kept, at every token.
ForwardGraph build_forward_graph(ggml_context * ctx, const Model & model, const KvCache & cache,
                                 const BatchShape & shape, const LowRankTerms * adapters, int stop_layer,
                                 const std::vector<int> & capture = {});

// A first guess at the tensors a forward graph creates, for a GraphArena's initial room (it grows as needed).
size_t forward_tensor_estimate(const ModelHparams & hp);

}  // namespace logo::core
