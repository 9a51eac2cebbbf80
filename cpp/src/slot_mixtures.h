// Per-slot adapter mixtures for continuous batching. Every weight that some slot adapts gets one stacked
// low-rank pair with a slice per slot:
//   a: [n_in, R, n_slots], b: [R, n_out, n_slots]
// Slice s holds slot s's selection concatenated and weighted (w_i s_i B_i | ...)(A_i; ...), zero-padded to
// the capacity R; a slot that does not adapt the weight holds zeros. A request taking a slot rewrites only
// that slot's slices, so the requests already running keep theirs; a batch over slots [0, n) multiplies
// each token by its own slot's slice (graph_llama.cpp's linear()).
#pragma once

#include <map>
#include <vector>

#include "graph.h"
#include "mixture.h"
#include "session.h"

namespace logo::core {

class SlotMixtures {
public:
    SlotMixtures(const Model & model, int n_slots);
    ~SlotMixtures();
    SlotMixtures(const SlotMixtures &) = delete;
    SlotMixtures & operator=(const SlotMixtures &) = delete;

    // Writes `selection` into `slot` (which must be clear), growing the stacks when a weight is new or
    // its capacity is too small (the other slots' contents are kept).
    void set(int slot, const Selection & selection);
    // Zeroes the slot's slices.
    void clear(int slot);
    // Slot `to` takes slot `from`'s mixture (copied on the device through `session`); `from` is cleared.
    void move(Session & session, int from, int to);
    // The terms a batch over slots [0, n) needs (weights one of them adapts), or nullptr when none.
    const LowRankTerms * terms(int n);
    size_t bytes() const;

private:
    struct Stack {
        int64_t n_in = 0, n_out = 0;
        int rank = 0;                 // capacity R
        ggml_tensor * a = nullptr;    // [n_in, R, n_slots]
        ggml_tensor * b = nullptr;    // [R, n_out, n_slots]
        std::vector<int> used;        // rank each slot uses (0: zeros)
    };

    const Model & model_;
    int n_slots_;
    ggml_type type_;
    std::map<const ggml_tensor *, Stack> stacks_;
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    LowRankTerms terms_;

    void check_slot(int slot) const;
    // Reallocates with at least `capacity` ranks per weight, keeping every slot's contents.
    void grow(const std::map<const ggml_tensor *, int> & capacity);
    void upload_slice(ggml_tensor * t, int slot, const std::vector<float> & values);
};

}  // namespace logo::core
