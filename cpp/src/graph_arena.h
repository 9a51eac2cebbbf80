// Graph capacity taken from what a graph holds, never guessed.
//
// ggml aborts the process when a context runs out of room for tensor objects, when a cgraph has fewer
// slots than its nodes or leafs, and when a scheduler's hash set is smaller than a graph's nodes plus
// leafs. Every graph of the runtime is therefore built in two steps:
//   1. its tensors are created in a no_alloc context over a GraphArena. Builders call graph_reserve(ctx, n)
//      before each unit of work (a layer, a linear map, a probe tail, one adapter of a loop) with n at
//      least the tensors that unit creates; when the arena is short that throws GraphArenaFull, and
//      build_graph() grows the arena (doubling, remembered for the next build) and builds again;
//   2. build_graph() bounds the nodes and leafs that ggml_build_forward_expand will visit from the
//      builder's outputs (the context's tensors plus the outside tensors they reference: one pass, no
//      hashing) and makes a cgraph of that capacity. The caller then sizes its scheduler from
//      BuiltGraph::size() (Session grows its own).
// Any graph built this way is sized correctly whatever it holds: depth, adapted maps, mixture path,
// number of sequences or adapters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "ggml.h"

namespace logo::core {

// Thrown by graph_reserve when a context lacks room; build_graph catches it, grows and rebuilds.
struct GraphArenaFull : std::runtime_error {
    size_t bytes_needed;  // at least this much more room is needed
    explicit GraphArenaFull(size_t needed)
        : std::runtime_error("internal: graph arena full (graph builders run inside build_graph)"), bytes_needed(needed) {}
};

// Throws GraphArenaFull unless `ctx` can still hold `n_tensors` more tensors. Call it before each unit of
// graph building with a generous n (a unit that creates 10 tensors may ask for 64: room is cheap).
void graph_reserve(ggml_context * ctx, size_t n_tensors);

// Tensor room for about one layer's worth of operations, and for one linear map with adapter terms.
constexpr size_t kLayerRoom = 256;
constexpr size_t kLinearRoom = 64;

struct BuiltGraph {
    ggml_context * ctx = nullptr;   // owned by the arena: valid until its next build
    ggml_cgraph * graph = nullptr;
    size_t n_nodes = 0;  // upper bounds (exact for most graphs but a few shared weights counted twice)
    size_t n_leafs = 0;
    size_t size() const { return n_nodes + n_leafs; }  // what a scheduler's hash set must hold
};

// Memory for the tensor objects (and the cgraph) of one graph at a time; grows when a build needs more.
class GraphArena {
public:
    explicit GraphArena(size_t n_tensors);
    ~GraphArena();
    GraphArena(const GraphArena &) = delete;
    GraphArena & operator=(const GraphArena &) = delete;

    // Builds with `build` (which creates tensors in the given context and returns the graph's outputs in
    // the order they must be expanded) until the arena is large enough, then makes the cgraph.
    // Throws std::length_error if a graph would need more than `kMaxBytes` of tensor objects.
    BuiltGraph build_graph(const std::function<std::vector<ggml_tensor *>(ggml_context *)> & build);

    size_t bytes() const { return memory_size_; }
    static constexpr size_t kMaxBytes = size_t(1) << 32;

private:
    struct AlignedDelete {
        void operator()(uint8_t * p) const;
    };
    size_t memory_size_ = 0;
    std::unique_ptr<uint8_t[], AlignedDelete> memory_;
    ggml_context * ctx_ = nullptr;

    ggml_context * fresh_context();
    // Upper bounds of the nodes and leafs that expanding `outputs` yields, from one pass over `ctx`.
    void bound_graph(ggml_context * ctx, const std::vector<ggml_tensor *> & outputs, size_t & n_nodes,
                     size_t & n_leafs) const;
    void grow(size_t at_least);
};

// Nodes and leafs of the graph that expanding `outputs` (in order) yields, counted as ggml visits them.
void count_graph(const std::vector<ggml_tensor *> & outputs, size_t & n_nodes, size_t & n_leafs);

}  // namespace logo::core
