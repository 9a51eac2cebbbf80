// Device memory for tensors made together, and for stacks that grow: the slot layouts of slot_mixtures.h
// keep all their stacks in one buffer; when a stack must widen, a new context and buffer are made, the old
// contents are carried over (copy_into_grown), and the old buffer is freed.
#pragma once

#include <cstddef>

#include "ggml-backend.h"
#include "ggml.h"

namespace logo::core {

// A ggml context of tensor headers and the one device buffer behind them, freed together.
class TensorBuffer {
public:
    TensorBuffer() = default;
    // Allocates every tensor of `ctx` on `device`, zeroed, and takes `ctx` over. Out of memory: frees `ctx`
    // and throws std::runtime_error naming `what` (e.g. "the slots' adapter mixtures").
    TensorBuffer(ggml_context * ctx, ggml_backend_dev_t device, const char * what);
    // The same in a given buffer type (e.g. the CPU's repacked layout a weight it copies lives in).
    TensorBuffer(ggml_context * ctx, ggml_backend_buffer_type_t buft, const char * what);
    ~TensorBuffer();
    TensorBuffer(TensorBuffer && other) noexcept;
    TensorBuffer & operator=(TensorBuffer && other) noexcept;
    TensorBuffer(const TensorBuffer &) = delete;
    TensorBuffer & operator=(const TensorBuffer &) = delete;

    size_t bytes() const;  // 0 before the first allocation

private:
    void release();
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
};

// Copies `old` into the leading corner of `grown` (a tensor of the same type and at least its extent in every
// dimension): element (i0, i1, i2) of old lands at (i0, i1, i2) of grown; the rest of grown is left zero.
// A stack keeps its ranks in place this way when its capacity R grows: A [n_in, R, n_slices] gains rows,
// B [R, n_out, n_slices] and rank weights [R, 1, n_slots] gain columns. Goes through the host (growth is
// rare: a new adapter or a larger mixture, never a decode step). Throws std::logic_error on a mismatch.
void copy_into_grown(const ggml_tensor * old, ggml_tensor * grown);

}  // namespace logo::core
