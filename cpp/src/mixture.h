// Weighted adapter mixtures rebuilt as one concatenated low-rank pair per adapted weight:
//   sum_i w_i s_i B_i A_i x  =  [B_1 | ... | B_k] [w_1 s_1 A_1; ...; w_k s_k A_k] x
// so k adapters cost one pair of matmuls of rank sum(r_i), not k pairs. Weights of one block that read
// the same input (attn_q/k/v, ffn_gate/up) share one concatenated A, so one matmul serves all of them.
// With several instances the pairs are stacked per sequence (zero-padded to the largest rank) and each
// sequence uses its own. Which types the pairs are stored in: see pair_type() in mixture.cpp and the README.
#pragma once

#include <vector>

#include "adapter.h"
#include "graph.h"
#include "session.h"
#include "tensor_buffer.h"

namespace logo::core {

struct WeightedAdapter {
    const Adapter * adapter = nullptr;
    float weight = 1.0f;
};
using Selection = std::vector<WeightedAdapter>;

class Mixture {
public:
    // One selection for every sequence (per_sequence.size() == 1), or one per sequence.
    Mixture(const Model & model, const std::vector<Selection> & per_sequence);
    Mixture(const Mixture &) = delete;
    Mixture & operator=(const Mixture &) = delete;

    const LowRankTerms & terms() const { return terms_; }

    // Whether fold() can serve this mixture: one selection, and every adapted weight stored as
    // F32, F16 or BF16 (a quantized weight would need requantizing).
    bool foldable(const Model & model) const;
    // Adds the mixture into copies of the adapted weights (W' = W + sum_i w_i s_i B_i A_i), computed on
    // the model's device; generation then costs exactly what the base model costs. Worth it when a
    // single instance generates many tokens: the fold reads each adapted weight once.
    void fold(Session & session);
    int n_sequences() const { return n_mix_; }
    size_t bytes() const;

private:
    LowRankTerms terms_;
    int n_mix_ = 1;
    TensorBuffer storage_;  // the pairs (A, B, slot weights)
    TensorBuffer folded_;   // the folded weights, once fold() ran
};

// The type the continuous-batching slot stacks (slot_mixtures.h, pooled_mixtures.h) are stored in: F32 over
// an F32 model, else F16. (Mixture itself chooses per base and adapters: pair_layout() in mixture.cpp.)
ggml_type mixture_type_for(const Model & model);

}  // namespace logo::core
