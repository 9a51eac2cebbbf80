#include "hparams.h"

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

    const std::string a = hp.arch_name + ".";
    hp.n_ctx_train = f.get_int(a + "context_length");
    hp.n_embd = f.get_int(a + "embedding_length");
    hp.n_layer = f.get_int(a + "block_count");
    hp.n_ff = f.get_int(a + "feed_forward_length");
    hp.n_head = f.get_int(a + "attention.head_count");
    hp.n_head_kv = f.get_int(a + "attention.head_count_kv", hp.n_head);
    if (hp.n_embd <= 0 || hp.n_layer <= 0 || hp.n_ff <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 ||
        hp.n_ctx_train <= 0) {
        throw FormatError("'" + f.path + "': embedding_length, block_count, feed_forward_length, "
                          "head counts and context_length must all be positive");
    }
    if (hp.n_head % hp.n_head_kv != 0) {
        throw FormatError("'" + f.path + "': head_count (" + std::to_string(hp.n_head) +
                          ") must be a multiple of head_count_kv (" + std::to_string(hp.n_head_kv) + ")");
    }
    const int64_t default_head_dim = hp.n_embd / hp.n_head;
    hp.head_dim_k = f.get_int(a + "attention.key_length", default_head_dim);
    hp.head_dim_v = f.get_int(a + "attention.value_length", default_head_dim);
    if (hp.head_dim_k != hp.head_dim_v || hp.head_dim_k <= 0 || hp.head_dim_k % 2 != 0) {
        throw FormatError("'" + f.path + "': attention key_length and value_length must be equal, even and positive");
    }
    hp.n_rot = f.get_int(a + "rope.dimension_count", hp.head_dim_k);
    if (hp.n_rot != hp.head_dim_k) {
        throw FormatError("'" + f.path + "': partial rotary embeddings (rope.dimension_count " +
                          std::to_string(hp.n_rot) + " != head size " + std::to_string(hp.head_dim_k) +
                          ") are not used by this architecture");
    }
    hp.rms_eps = float(f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5));
    hp.rope_freq_base = float(f.get_float(a + "rope.freq_base", 10000.0));

    // Rope scaling: linear (freq_scale = 1/factor) or none. llama 3.x frequency factors come as a tensor.
    const std::string scaling = f.get_string(a + "rope.scaling.type", "none");
    if (scaling == "linear") {
        const double factor = f.get_float(a + "rope.scaling.factor", 1.0);
        if (factor <= 0) throw FormatError("'" + f.path + "': rope.scaling.factor must be positive");
        hp.rope_freq_scale = float(1.0 / factor);
    } else if (scaling != "none") {
        throw FormatError("'" + f.path + "': rope scaling type '" + scaling +
                          "' is not supported (supported: none, linear)");
    } else if (f.has_key(a + "rope.scale_linear")) {
        hp.rope_freq_scale = float(1.0 / f.get_float(a + "rope.scale_linear", 1.0));
    }

    // The vocabulary size follows the embedding tensor; the key is optional.
    const ggml_tensor * embd = f.find_tensor("token_embd.weight");
    if (!embd) throw FormatError("'" + f.path + "': missing tensor 'token_embd.weight'");
    hp.n_vocab = embd->ne[1];
    return hp;
}

}  // namespace logo::core
