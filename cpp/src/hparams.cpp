#include "hparams.h"

#include <algorithm>
#include <climits>
#include <limits>

#include "logo/errors.h"
#include "ggml.h"
#include "gguf_file.h"

namespace logo::core {

const std::vector<std::string> & supported_architectures() {
    static const std::vector<std::string> names = {"llama", "qwen2", "qwen3"};
    return names;
}

static std::string joined_supported() {
    std::string out;
    for (const auto & n : supported_architectures()) out += (out.empty() ? "" : ", ") + n;
    return out;
}

ModelHparams read_hparams(const GgufFile & f) {
    ModelHparams hp;
    const std::string general_type = f.get_string("general.type", "model");
    if (general_type == "adapter") {
        throw FormatError("'" + f.path + "' is a LoRA adapter, not a base model (general.type = adapter)");
    }
    hp.arch_name = f.get_string("general.architecture");
    if (hp.arch_name == "llama") {
        hp.arch = Arch::llama;
        hp.rope_mode = GGML_ROPE_TYPE_NORMAL;
    } else if (hp.arch_name == "qwen2") {
        hp.arch = Arch::qwen2;
        hp.rope_mode = GGML_ROPE_TYPE_NEOX;
        hp.has_qkv_bias = true;
    } else if (hp.arch_name == "qwen3") {
        hp.arch = Arch::qwen3;
        hp.rope_mode = GGML_ROPE_TYPE_NEOX;
        hp.has_qk_norm = true;
    } else {
        throw FormatError("'" + f.path + "': unsupported architecture '" + hp.arch_name +
                          "'; supported: " + joined_supported());
    }

    // Every value below reaches arithmetic (shapes, loops, rope, norms): each is read with its range,
    // so a corrupt or hostile header fails here, naming its key, before anything is sized from it.
    // The limits are far above any released model and keep every product of them inside int64.
    const std::string a = hp.arch_name + ".";
    constexpr int64_t kMaxWidth = int64_t(1) << 20, kMaxHeads = int64_t(1) << 16;
    hp.n_ctx_train = f.get_int_in(a + "context_length", 1, INT32_MAX);
    hp.n_embd = f.get_int_in(a + "embedding_length", 1, kMaxWidth);
    // A block has several tensors, so a count above the file's tensor count can only be wrong (and
    // would size the expected-tensor table from a corrupt number).
    hp.n_layer = f.get_int_in(a + "block_count", 1, std::min<int64_t>(kMaxHeads, gguf_get_n_tensors(f.gguf)));
    hp.n_ff = f.get_int_in(a + "feed_forward_length", 1, 4 * kMaxWidth);
    hp.n_head = f.get_int_in(a + "attention.head_count", 1, kMaxHeads);
    hp.n_head_kv = f.get_int_in(a + "attention.head_count_kv", hp.n_head, 1, hp.n_head);
    if (hp.n_head % hp.n_head_kv != 0) {
        throw FormatError("'" + f.path + "': key '" + a + "attention.head_count' (" + std::to_string(hp.n_head) +
                          ") must be a multiple of '" + a + "attention.head_count_kv' (" + std::to_string(hp.n_head_kv) + ")");
    }
    const int64_t default_head_dim = hp.n_embd / hp.n_head;
    hp.head_dim_k = f.get_int_in(a + "attention.key_length", default_head_dim, 1, kMaxHeads);
    hp.head_dim_v = f.get_int_in(a + "attention.value_length", default_head_dim, 1, kMaxHeads);
    if (hp.head_dim_k != hp.head_dim_v || hp.head_dim_k <= 0 || hp.head_dim_k % 2 != 0) {
        throw FormatError("'" + f.path + "': attention key_length (" + std::to_string(hp.head_dim_k) + ") and value_length (" +
                          std::to_string(hp.head_dim_v) + ") must be equal, even and positive (head_count " +
                          std::to_string(hp.n_head) + " over embedding_length " + std::to_string(hp.n_embd) + ")");
    }
    hp.n_rot = f.get_int_in(a + "rope.dimension_count", hp.head_dim_k, 0, kMaxHeads);
    if (hp.n_rot != hp.head_dim_k) {
        throw FormatError("'" + f.path + "': partial rotary embeddings (rope.dimension_count " +
                          std::to_string(hp.n_rot) + " != head size " + std::to_string(hp.head_dim_k) +
                          ") are not used by this architecture");
    }
    // Floats are kept as float: the lower bounds keep them positive and normal after the conversion.
    const double tiny = std::numeric_limits<float>::min(), huge = std::numeric_limits<float>::max();
    hp.rms_eps = float(f.get_float_in(a + "attention.layer_norm_rms_epsilon", 1e-5, tiny, 0.5,
                                      "a finite number in (0, 0.5]"));
    hp.rope_freq_base = float(f.get_float_in(a + "rope.freq_base", 10000.0, tiny, huge, "a finite number > 0"));

    // Rope scaling: linear (freq_scale = 1/factor) or none. llama 3.x frequency factors come as a tensor.
    const std::string scaling = f.get_string(a + "rope.scaling.type", "none");
    const double kMinFactor = 1e-30;  // 1 / factor stays a finite float
    if (scaling == "linear") {
        hp.rope_freq_scale = float(1.0 / f.get_float_in(a + "rope.scaling.factor", 1.0, kMinFactor, huge, "a finite number > 0"));
    } else if (scaling != "none") {
        throw FormatError("'" + f.path + "': rope scaling type '" + scaling +
                          "' is not supported (supported: none, linear)");
    } else if (f.has_key(a + "rope.scale_linear")) {
        hp.rope_freq_scale = float(1.0 / f.get_float_in(a + "rope.scale_linear", 1.0, kMinFactor, huge, "a finite number > 0"));
    }

    // The vocabulary size follows the embedding tensor; the key is optional.
    const ggml_tensor * embd = f.find_tensor("token_embd.weight");
    if (!embd) throw FormatError("'" + f.path + "': missing tensor 'token_embd.weight'");
    hp.n_vocab = embd->ne[1];
    return hp;
}

}  // namespace logo::core
