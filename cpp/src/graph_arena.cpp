#include "graph_arena.h"

#include <algorithm>
#include <new>
#include <string>
#include <unordered_set>

namespace logo::core {

namespace {

size_t room_left(ggml_context * ctx) {
    const size_t size = ggml_get_mem_size(ctx), used = ggml_used_mem(ctx);
    return size > used ? size - used : 0;
}

constexpr size_t kAlignment = 64;  // ggml needs GGML_MEM_ALIGN (16); a cache line costs nothing more

// What ggml_visit_parents treats as a leaf: an operand that is not computed (weights, inputs, caches).
bool is_leaf(const ggml_tensor * t) { return t->op == GGML_OP_NONE && !(t->flags & GGML_TENSOR_FLAG_PARAM); }

}  // namespace

void graph_reserve(ggml_context * ctx, size_t n_tensors) {
    const size_t need = n_tensors * ggml_tensor_overhead();
    const size_t left = room_left(ctx);
    if (left < need) throw GraphArenaFull(need - left);
}

void count_graph(const std::vector<ggml_tensor *> & outputs, size_t & n_nodes, size_t & n_leafs) {
    n_nodes = n_leafs = 0;
    std::unordered_set<const ggml_tensor *> seen;
    std::vector<const ggml_tensor *> stack;
    for (const ggml_tensor * out : outputs) {
        if (out) stack.push_back(out);
        // Depth-first over operands without recursion: a deep model's graph is a long chain.
        while (!stack.empty()) {
            const ggml_tensor * t = stack.back();
            stack.pop_back();
            if (!seen.insert(t).second) continue;
            (is_leaf(t) ? n_leafs : n_nodes) += 1;
            for (const ggml_tensor * src : t->src) {
                if (src && !seen.count(src)) stack.push_back(src);
            }
        }
    }
}

void GraphArena::AlignedDelete::operator()(uint8_t * p) const { ::operator delete[](p, std::align_val_t(kAlignment)); }

GraphArena::GraphArena(size_t n_tensors) { grow(std::max<size_t>(n_tensors, 64) * ggml_tensor_overhead()); }

GraphArena::~GraphArena() {
    if (ctx_) ggml_free(ctx_);
}

void GraphArena::grow(size_t at_least) {
    if (ctx_) {
        ggml_free(ctx_);
        ctx_ = nullptr;
    }
    size_t size = std::max(at_least, 2 * memory_size_);
    size = GGML_PAD(size, 4096);
    if (size > kMaxBytes) {
        throw std::length_error("this graph would need more than " + std::to_string(kMaxBytes >> 20) +
                                " MiB of tensor descriptions; use fewer sequences, adapters or tokens per evaluation");
    }
    // Not value-initialised: ggml touches only the part a graph uses.
    memory_.reset(static_cast<uint8_t *>(::operator new[](size, std::align_val_t(kAlignment))));
    memory_size_ = size;
}

ggml_context * GraphArena::fresh_context() {
    if (ctx_) ggml_free(ctx_);
    ggml_init_params params = {memory_size_, memory_.get(), /*no_alloc=*/true};
    ctx_ = ggml_init(params);
    if (!ctx_) throw std::bad_alloc();
    return ctx_;
}

void GraphArena::bound_graph(ggml_context * ctx, const std::vector<ggml_tensor *> & outputs, size_t & n_nodes,
                             size_t & n_leafs) const {
    // Every computed tensor of a graph is created in its context; the leafs are the context's own
    // uncomputed tensors (inputs) plus what they reference from outside (weights, caches, adapter
    // terms). One pass over the context bounds both without hashing. The exact count is the
    // fallback for an outside tensor that is itself computed (its own operands would need visiting).
    const uint8_t * begin = memory_.get();
    const uint8_t * end = begin + memory_size_;
    auto inside = [&](const ggml_tensor * t) {
        const uint8_t * p = reinterpret_cast<const uint8_t *>(t);
        return p >= begin && p < end;
    };
    n_nodes = n_leafs = 0;
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
        (is_leaf(t) ? n_leafs : n_nodes) += 1;
        for (const ggml_tensor * src : t->src) {
            if (!src || inside(src)) continue;
            if (!is_leaf(src) || src->src[0]) {
                count_graph(outputs, n_nodes, n_leafs);
                return;
            }
            n_leafs += 1;
        }
    }
    for (const ggml_tensor * t : outputs) {
        if (t && !inside(t)) n_leafs += 1;  // an output that is itself an outside leaf
    }
}

BuiltGraph GraphArena::build_graph(const std::function<std::vector<ggml_tensor *>(ggml_context *)> & build) {
    for (;;) {
        ggml_context * ctx = fresh_context();
        try {
            const std::vector<ggml_tensor *> outputs = build(ctx);
            BuiltGraph built;
            bound_graph(ctx, outputs, built.n_nodes, built.n_leafs);
            // ggml checks n < size before adding a node or leaf, so size = the larger count suffices; +1 spare.
            const size_t size = std::max(built.n_nodes, built.n_leafs) + 1;
            const size_t graph_bytes = ggml_graph_overhead_custom(size, false);
            const size_t left = room_left(ctx);
            if (left < graph_bytes) throw GraphArenaFull(graph_bytes - left);
            built.ctx = ctx;
            built.graph = ggml_new_graph_custom(ctx, size, false);
            for (ggml_tensor * t : outputs) {
                if (t) ggml_build_forward_expand(built.graph, t);
            }
            return built;
        } catch (const GraphArenaFull & full) {
            grow(memory_size_ + full.bytes_needed);
        }
    }
}

}  // namespace logo::core
