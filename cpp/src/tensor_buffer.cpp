#include "tensor_buffer.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace logo::core {

TensorBuffer::TensorBuffer(ggml_context * ctx, ggml_backend_dev_t device, const char * what)
    : TensorBuffer(ctx, ggml_backend_dev_buffer_type(device), what) {}

TensorBuffer::TensorBuffer(ggml_context * ctx, ggml_backend_buffer_type_t buft, const char * what) : ctx_(ctx) {
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, buft);
    if (!buffer_) {
        release();
        throw std::runtime_error(std::string("out of memory: cannot allocate ") + what);
    }
    // Zeroes are part of the layouts' contract: unused ranks and slots must contribute exact zeros.
    ggml_backend_buffer_clear(buffer_, 0);
}

TensorBuffer::~TensorBuffer() { release(); }

TensorBuffer::TensorBuffer(TensorBuffer && other) noexcept
    : ctx_(std::exchange(other.ctx_, nullptr)), buffer_(std::exchange(other.buffer_, nullptr)) {}

TensorBuffer & TensorBuffer::operator=(TensorBuffer && other) noexcept {
    if (this != &other) {
        release();
        ctx_ = std::exchange(other.ctx_, nullptr);
        buffer_ = std::exchange(other.buffer_, nullptr);
    }
    return *this;
}

size_t TensorBuffer::bytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0; }

void TensorBuffer::release() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
    buffer_ = nullptr;
    ctx_ = nullptr;
}

void copy_into_grown(const ggml_tensor * old, ggml_tensor * grown) {
    if (old->type != grown->type || old->ne[3] != 1 || grown->ne[3] != 1 || old->ne[0] > grown->ne[0] ||
        old->ne[1] > grown->ne[1] || old->ne[2] > grown->ne[2]) {
        throw std::logic_error("copy_into_grown: the grown stack must have the old one's type and extents");
    }
    std::vector<uint8_t> from(ggml_nbytes(old));
    std::vector<uint8_t> to(ggml_nbytes(grown), 0);
    ggml_backend_tensor_get(old, from.data(), 0, from.size());
    const size_t row = ggml_row_size(old->type, old->ne[0]);  // an old row's bytes: a prefix of the grown row
    for (int64_t i2 = 0; i2 < old->ne[2]; ++i2) {
        for (int64_t i1 = 0; i1 < old->ne[1]; ++i1) {
            std::memcpy(to.data() + i2 * grown->nb[2] + i1 * grown->nb[1], from.data() + i2 * old->nb[2] + i1 * old->nb[1],
                        row);
        }
    }
    ggml_backend_tensor_set(grown, to.data(), 0, to.size());
}

}  // namespace logo::core
