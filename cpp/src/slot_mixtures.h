// Per-slot adapter mixtures for continuous batching: each running request (slot) multiplies its tokens by its
// own mixture inside one batch evaluation, and a request taking a slot changes only that slot's state, so the
// requests already running keep theirs. Two layouts:
//
// - Stacked: for every adapted weight one pair a: [n_in, R, n_slots], b: [R, n_out, n_slots] whose slice s holds
//   slot s's selection concatenated and weighted, (w_1 s_1 B_1 | ...)(A_1; ...), zero-padded to the capacity R.
//   Every step reads n_active slices: the layout for large pools (each slot reads only its own k adapters).
// - Pooled: for every adapted weight the whole pool stacked once, a: [n_in, R, 1], b: [R, n_out, 1] (alpha/r
//   folded into B), and per-slot rank weights [R, 1, n_slots] (w_i on adapter i's ranks, 0 elsewhere):
//   y += B (w_s * (A x)). Every step reads the pool once, whatever the number of slots: the layout for small
//   pools and many slots. Writing a slot is R floats per weight.
//
// Both keep a request's output independent of what runs beside it: capacities are multiples of 64 ranks and an
// adapter's ranks never move, so each dot product over R adds the same non-zero terms in the same SIMD lanes
// (ggml's steps are at most 64 elements) plus exact zeros.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "graph.h"
#include "mixture.h"
#include "session.h"
#include "tensor_buffer.h"

namespace logo::core {

enum class SlotLayout { automatic, stacked, pooled };

class SlotMixtures {
public:
    explicit SlotMixtures(int n_slots);  // throws invalid_argument unless n_slots >= 1
    virtual ~SlotMixtures() = default;
    // Writes `selection` into `slot` (which must be clear), growing storage as needed (other slots keep theirs).
    virtual void set(int slot, const Selection & selection) = 0;
    // Zeroes the slot.
    virtual void clear(int slot) = 0;
    // Slot `to` takes slot `from`'s mixture (copied on the device through `session`); `from` is cleared.
    void move(Session & session, int from, int to);
    // The terms a batch over slots [0, n) needs (weights one of them adapts), or nullptr when none.
    virtual const LowRankTerms * terms(int n) = 0;
    virtual size_t bytes() const = 0;
    virtual SlotLayout layout() const = 0;

protected:
    const int n_slots_;
    void check_slot(int slot) const;        // invalid_argument outside [0, n_slots)
    void check_slot_count(int n) const;     // invalid_argument outside [0, n_slots]
    // move()'s layout-specific part: copy slot `from`'s contents into `to` (valid, distinct, `to` clear).
    virtual void copy_slot(Session & session, int from, int to) = 0;
};

// `pool`: the adapters the slots will select (the pooled layout stacks them up front; adapters met later are
// appended). automatic takes the pooled layout when, for every weight, the pool's ranks are at most what
// n_slots stacked slices of the minimal capacity (64) would read per step.
std::unique_ptr<SlotMixtures> make_slot_mixtures(const Model & model, int n_slots, const std::vector<const Adapter *> & pool,
                                                 SlotLayout layout);

// Writes F32 values into a F32 or F16 tensor at a byte offset (converting to F16 as needed).
void upload_values(ggml_tensor * t, size_t offset, const std::vector<float> & values);

// Zeroes slice `i` (t[:, :, i]) of a stack: a slot's ranks in a stacked pair, its rank weights when pooled.
void zero_slice(ggml_tensor * t, int i);

// Capacities are rounded up to this many ranks (see the header comment).
constexpr int kRankQuantum = 64;
inline int round_up_ranks(int r) { return (r + kRankQuantum - 1) / kRankQuantum * kRankQuantum; }

class StackedMixtures : public SlotMixtures {
public:
    StackedMixtures(const Model & model, int n_slots);

    void set(int slot, const Selection & selection) override;
    void clear(int slot) override;
    const LowRankTerms * terms(int n) override;
    size_t bytes() const override { return storage_.bytes(); }
    SlotLayout layout() const override { return SlotLayout::stacked; }

private:
    struct Stack {
        int64_t n_in = 0, n_out = 0;
        int rank = 0;                 // capacity R
        ggml_tensor * a = nullptr;    // [n_in, R, n_slots]
        ggml_tensor * b = nullptr;    // [R, n_out, n_slots]
        std::vector<int> used;        // rank each slot uses (0: zeros)
    };

    const Model & model_;
    ggml_type type_;
    std::map<const ggml_tensor *, Stack> stacks_;
    TensorBuffer storage_;
    LowRankTerms terms_;

    void copy_slot(Session & session, int from, int to) override;
    // Reallocates with at least `capacity` ranks per weight, keeping every slot's contents.
    void grow(const std::map<const ggml_tensor *, int> & capacity);
};

class PooledMixtures : public SlotMixtures {
public:
    PooledMixtures(const Model & model, int n_slots, const std::vector<const Adapter *> & pool);

    void set(int slot, const Selection & selection) override;
    void clear(int slot) override;
    const LowRankTerms * terms(int n) override;
    size_t bytes() const override { return storage_.bytes(); }
    SlotLayout layout() const override { return SlotLayout::pooled; }

private:
    struct Stack {
        int64_t n_in = 0, n_out = 0;
        int rank = 0;                        // capacity R
        int filled = 0;                      // ranks holding adapters
        ggml_tensor * a = nullptr;           // [n_in, R, 1]
        ggml_tensor * b = nullptr;           // [R, n_out, 1], alpha/r folded in
        ggml_tensor * slot_weights = nullptr;  // F32 [R, 1, n_slots]
        std::vector<char> used;              // whether each slot has non-zero weights here
    };
    // An adapter's place in the stacks; its data is a copy, so the pool may drop it meanwhile.
    struct Entry {
        const Adapter * adapter;
        std::string name;
        std::map<const ggml_tensor *, int> offset;  // first rank per adapted weight
    };

    const Model & model_;
    ggml_type type_;
    std::map<const ggml_tensor *, Stack> stacks_;
    std::vector<Entry> entries_;
    TensorBuffer storage_;
    LowRankTerms terms_;

    void copy_slot(Session & session, int from, int to) override;
    const Entry * find(const Adapter * adapter) const;
    // Appends adapters to the stacks (reallocating when capacities grow, keeping contents and slot weights).
    void append(const std::vector<const Adapter *> & adapters);
};

}  // namespace logo::core
