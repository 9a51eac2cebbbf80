#include "kv_cache.h"

#include <stdexcept>
#include <string>

namespace logo::core {

KvCache::KvCache(const ModelHparams & hp, int n_ctx_, int n_stream_, ggml_backend_dev_t device)
    : n_ctx(n_ctx_), n_stream(n_stream_), length(size_t(n_stream_), 0) {
    ggml_init_params params = {size_t(2 * hp.n_layer) * ggml_tensor_overhead(), nullptr, true};
    ctx_ = ggml_init(params);
    const int64_t rows = int64_t(n_ctx) * n_stream;
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        k.push_back(ggml_new_tensor_2d(ctx_, GGML_TYPE_F16, hp.n_embd_k_gqa(), rows));
        v.push_back(ggml_new_tensor_2d(ctx_, GGML_TYPE_F16, hp.n_embd_v_gqa(), rows));
    }
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, ggml_backend_dev_buffer_type(device));
    if (!buffer_) {
        ggml_free(ctx_);
        throw std::runtime_error("out of memory: cannot allocate the KV cache (n_ctx=" + std::to_string(n_ctx) +
                                 ", sequences=" + std::to_string(n_stream) + ")");
    }
    // Rows past a stream's length are masked out, but must not hold NaN bit patterns that a kernel
    // could multiply by a zero weight.
    ggml_backend_buffer_clear(buffer_, 0);
}

KvCache::~KvCache() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

size_t KvCache::bytes() const { return ggml_backend_buffer_get_size(buffer_); }

}  // namespace logo::core
