// A loaded base model: hyperparameters, weights in backend buffers, the tokenizer, and the device.
// Read-only after loading, so several sessions (and threads) can share one Model.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml-backend.h"
#include "hparams.h"
#include "vocab.h"
#include "weights.h"

namespace logo::core {

class CalibrationCache;  // calibration.h

struct ModelOptions {
    std::string device = "auto";
    int n_threads = 0;  // 0: one per core
    bool use_mmap = true;
    bool repack = true;  // the CPU backend's repacked weight layouts (llama.cpp's use_extra_bufts)
};

class Model {
public:
    // Validates the whole file (keys, every tensor's presence, type and shape) before allocating anything.
    Model(const std::string & path, const ModelOptions & options);
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const std::string & path() const { return path_; }
    const ModelHparams & hparams() const { return hparams_; }
    const ModelWeights & weights() const { return weights_; }
    const Vocab & vocab() const { return *vocab_; }
    ggml_backend_dev_t device() const { return device_; }
    int n_threads() const { return n_threads_; }
    bool repack() const { return repack_; }  // as asked (ModelOptions::repack); it matters on the CPU only
    size_t weight_bytes() const;

    // A weight by its GGUF name (e.g. "blk.3.attn_q.weight"), for adapters; nullptr when absent.
    ggml_tensor * find_weight(const std::string & name) const;

    // The CPU's repacked buffer type holding weight `w` (interleaved layouts, ModelOptions::repack), or
    // nullptr when `w` is stored in ggml's plain layout. A repacked weight's bytes are not its type's plain
    // blocks: only matmuls may read it, and a copy must be written through ggml_backend_tensor_set.
    ggml_backend_buffer_type_t repacked_type(const ggml_tensor * w) const;
    // Weight `w`'s data in ggml's plain layout, as the model file stores it (read from the file).
    std::vector<uint8_t> plain_bytes(const ggml_tensor * w) const;

    // What calibrated routing learns about this model once (the generic prompts' hidden states) and about
    // each adapter matrix (its statistics): filled on first use, behind its own lock; the weights stay read-only.
    CalibrationCache & calibration_cache() const { return *calibration_cache_; }

private:
    std::string path_;
    ModelHparams hparams_;
    ModelWeights weights_;
    std::unique_ptr<Vocab> vocab_;
    ggml_backend_dev_t device_ = nullptr;
    int n_threads_ = 1;
    bool repack_ = true;

    ggml_context * ctx_ = nullptr;  // tensor metadata of all weights
    std::vector<ggml_backend_buffer_t> buffers_;
    void * mapping_ = nullptr;
    size_t mapping_size_ = 0;
    std::unordered_map<std::string, ggml_tensor *> by_name_;
    std::unique_ptr<CalibrationCache> calibration_cache_;

    void release();
};

}  // namespace logo::core
