#include "kv_cache.h"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace logo::core {

namespace {

// `n_stream` once the cache of n_ctx x n_stream rows is known to fit the device; throws invalid_argument naming both
// otherwise. It runs before anything is created, the per-stream lengths included (2^31 streams of bookkeeping were a
// std::bad_alloc before this check could speak): ggml asserts on element counts past int64, and an allocation larger
// than the device's memory could succeed lazily on the CPU and fail when first written.
int checked_streams(const ModelHparams & hp, int n_ctx, int n_stream, ggml_backend_dev_t device) {
    const double rows = double(n_ctx) * double(n_stream);
    const double bytes = rows * double(hp.n_embd_k_gqa() + hp.n_embd_v_gqa()) * double(hp.n_layer) *
                         double(ggml_type_size(GGML_TYPE_F16));
    size_t free_memory = 0, total_memory = 0;
    ggml_backend_dev_memory(device, &free_memory, &total_memory);
    const double limit = total_memory > 0 ? double(total_memory) : double(INT64_MAX) / 4;
    if (bytes > limit) {
        throw std::invalid_argument("a KV cache for n_ctx=" + std::to_string(n_ctx) + " and " + std::to_string(n_stream) +
                                    " sequences needs " + std::to_string(int64_t(bytes / double(1 << 20))) + " MiB, more than the " +
                                    std::to_string(int64_t(limit / double(1 << 20))) + " MiB " + ggml_backend_dev_name(device) +
                                    " has; use a smaller n_ctx or fewer sequences (n_seq; a ContinuousBatch's n_slots, "
                                    "serve's --parallel)");
    }
    return n_stream;
}

}  // namespace

KvCache::KvCache(const ModelHparams & hp, int n_ctx_, int n_stream_, ggml_backend_dev_t device)
    : n_ctx(n_ctx_), n_stream(n_stream_), length(size_t(checked_streams(hp, n_ctx_, n_stream_, device)), 0) {
    const int64_t rows = int64_t(n_ctx) * n_stream;
    ggml_init_params params = {size_t(2 * hp.n_layer) * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        k.push_back(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_k_gqa(), rows));
        v.push_back(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_v_gqa(), rows));
    }
    // Zeroed: rows past a stream's length are masked out, but must not hold NaN bit patterns that a kernel
    // could multiply by a zero weight.
    const std::string what = "the KV cache (n_ctx=" + std::to_string(n_ctx) + ", sequences=" + std::to_string(n_stream) + ")";
    storage_ = TensorBuffer(ctx, device, what.c_str());
}

}  // namespace logo::core
