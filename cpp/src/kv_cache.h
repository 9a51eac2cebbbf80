// The per-session key/value cache: for every layer one K and one V tensor of F16 rows, with a fixed
// slice of n_ctx rows per sequence ("stream"), so a row's index is stream * n_ctx + position.
#pragma once

#include <vector>

#include "ggml-backend.h"
#include "hparams.h"
#include "tensor_buffer.h"

namespace logo::core {

struct KvCache {
    int n_ctx = 0;     // positions per stream
    int n_stream = 0;  // independent sequences
    std::vector<ggml_tensor *> k;  // per layer [n_embd_k_gqa, n_ctx * n_stream]
    std::vector<ggml_tensor *> v;  // per layer [n_embd_v_gqa, n_ctx * n_stream]
    std::vector<int> length;       // tokens held per stream

    KvCache(const ModelHparams & hp, int n_ctx, int n_stream, ggml_backend_dev_t device);
    KvCache(const KvCache &) = delete;
    KvCache & operator=(const KvCache &) = delete;

    size_t bytes() const { return storage_.bytes(); }

private:
    TensorBuffer storage_;  // every k and v tensor, zeroed
};

}  // namespace logo::core
