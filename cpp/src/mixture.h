// Weighted adapter mixtures rebuilt as one concatenated low-rank pair per adapted weight:
//   sum_i w_i s_i B_i A_i x  =  [B_1 | ... | B_k] [w_1 s_1 A_1; ...; w_k s_k A_k] x
// so k adapters cost one pair of matmuls of rank sum(r_i), not k pairs. Weights of one block that read
// the same input (attn_q/k/v, ffn_gate/up) share one concatenated A, so one matmul serves all of them.
// With several instances the pairs are stacked per sequence (zero-padded to the largest rank) and each
// sequence uses its own. Which types the pairs are stored in: see pair_type() in mixture.cpp and the README.
#pragma once

#include <vector>

#include "adapter.h"
#include "logo/types.h"
#include "graph.h"
#include "session.h"
#include "tensor_buffer.h"

namespace logo::core {

struct WeightedAdapter {
    const Adapter * adapter = nullptr;
    float weight = 1.0f;
};
using Selection = std::vector<WeightedAdapter>;

// How a fold builds the folded weights (logo::FoldMode): in the weights' own float type only, or in any
// type the device can dequantize and quantize (lossy on quantized weights).
// requantize_stochastic: the same, re-rounded stochastically (stochastic_rounding.h) where the type allows.
// upcast: into Q8_0 copies of quantized weights whatever their type (fold_type()), float weights as float_only.
enum class FoldKind { float_only, requantize, requantize_stochastic, upcast };

// The type a fold of `kind` writes a weight of type `type` in: its own, except for upcast, which folds every
// quantized type into Q8_0 (8.5 bits an element: finer than every quantized type but Q8_1/Q8_K, which ggml
// uses for activations only) and keeps F32/F16/BF16.
ggml_type fold_type(FoldKind kind, ggml_type type);

class Mixture {
public:
    // One selection for every sequence (per_sequence.size() == 1), or one per sequence.
    // exact_pair: the pair in F32 whatever the base (for a requantizing fold: the delta from the adapters'
    // values as stored, not from the Q8_0 pair a quantized base otherwise computes with).
    Mixture(const Model & model, const std::vector<Selection> & per_sequence, bool exact_pair = false);
    Mixture(const Mixture &) = delete;
    Mixture & operator=(const Mixture &) = delete;

    const LowRankTerms & terms() const { return terms_; }

    // Whether fold() can serve this mixture: one selection, and every adapted weight stored as
    // F32, F16 or BF16 (a quantized weight would need requantizing).
    bool foldable(const Model & model) const;
    // Throws std::invalid_argument unless fold(session, kind) (requantize, requantize_stochastic, upcast) can
    // serve this mixture: one selection for every sequence, and each adapted weight of a type the model's
    // device can dequantize, and quantize into fold_type(kind, type) (ggml's CPU cannot quantize IQ1_S/IQ1_M/
    // IQ2_*/IQ3_*: they need an imatrix; upcast folds them into Q8_0, which it can).
    void check_requantizable(const Model & model, FoldKind kind = FoldKind::requantize) const;
    // Adds the mixture into copies of the adapted weights, W' = T(T^-1(W) + sum_i w_i s_i B_i A_i) with T the
    // weight's type (the identity for F32; rounding for F16/BF16; ggml's quantizer for quantized types:
    // lossy), computed on the model's device in one graph (F32 in between); generation then costs exactly
    // what the base model costs (upcast: what the base costs with those weights in Q8_0). A weight in the
    // CPU's repacked layout is read from the model file and a copy of its own type written into the same
    // repacked buffer type, so it runs the same kernels (an upcast copy goes to the device's plain buffer).
    // The pairs are freed.
    // `keep`: also returns each folded weight's plain bytes (Context::folded_weights).
    void fold(Session & session, FoldKind kind = FoldKind::float_only, std::vector<FoldedWeight> * keep = nullptr);
    int n_sequences() const { return n_mix_; }
    size_t bytes() const;

private:
    LowRankTerms terms_;
    int n_mix_ = 1;
    TensorBuffer storage_;  // the pairs (A, B, slot weights)
    std::vector<TensorBuffer> folded_;  // the folded weights, once fold() ran (one buffer per buffer type)
};

// The type the continuous-batching slot stacks (slot_mixtures.h, pooled_mixtures.h) are stored in: F32 over
// an F32 model, else F16. (Mixture itself chooses per base and adapters: pair_layout() in mixture.cpp.)
ggml_type mixture_type_for(const Model & model);

}  // namespace logo::core
