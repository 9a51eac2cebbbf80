#include "mixture.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace logo {

ggml_type mixture_type_for(const Model & model) {
    return model.weights().layers.at(0).wq->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
}

Mixture::Mixture(const Model & model, const std::vector<Selection> & per_sequence, ggml_type type)
    : n_mix_(int(per_sequence.size())) {
    if (per_sequence.empty()) throw std::invalid_argument("a mixture needs at least one selection");
    if (type != GGML_TYPE_F32 && type != GGML_TYPE_F16) throw std::invalid_argument("mixtures are F32 or F16");

    // Which weights are adapted, and the rank each sequence's concatenation reaches on each.
    std::map<const ggml_tensor *, int> rank_needed;
    std::map<const ggml_tensor *, std::vector<int>> rank_per_seq;
    for (size_t s = 0; s < per_sequence.size(); ++s) {
        for (const WeightedAdapter & wa : per_sequence[s]) {
            if (!wa.adapter) throw std::invalid_argument("null adapter in a mixture");
            for (const LoraMatrix & m : wa.adapter->matrices) {
                auto & ranks = rank_per_seq[m.base];
                ranks.resize(per_sequence.size(), 0);
                ranks[s] += m.rank;
                rank_needed[m.base] = std::max(rank_needed[m.base], ranks[s]);
            }
        }
    }
    if (rank_needed.empty()) return;  // nothing adapted: no terms

    ggml_init_params params = {2 * rank_needed.size() * ggml_tensor_overhead(), nullptr, true};
    ctx_ = ggml_init(params);
    for (const auto & [base, rank] : rank_needed) {
        LowRankTerm term;
        term.a = ggml_new_tensor_3d(ctx_, type, base->ne[0], rank, n_mix_);  // [n_in, R, n_mix]
        term.b = ggml_new_tensor_3d(ctx_, type, rank, base->ne[1], n_mix_);  // [R, n_out, n_mix]
        terms_[base] = term;
    }
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, ggml_backend_dev_buffer_type(model.device()));
    if (!buffer_) throw std::runtime_error("out of memory: cannot allocate an adapter mixture");

    for (const auto & [base, term] : terms_) {
        const int64_t n_in = base->ne[0], n_out = base->ne[1], R = term.a->ne[1];
        // Zero rows of A and columns of B pad a sequence whose concatenation is shorter than R.
        std::vector<float> a(size_t(n_in * R * n_mix_), 0.0f);
        std::vector<float> b(size_t(R * n_out * n_mix_), 0.0f);
        for (size_t s = 0; s < per_sequence.size(); ++s) {
            float * a_seq = a.data() + s * size_t(n_in * R);
            float * b_seq = b.data() + s * size_t(R * n_out);
            int64_t r0 = 0;
            for (const WeightedAdapter & wa : per_sequence[s]) {
                const LoraMatrix * m = wa.adapter->find(base);
                if (!m) continue;
                const std::vector<float> a_i = to_host_f32(m->a);  // [r][n_in]
                const std::vector<float> b_i = to_host_f32(m->b);  // [n_out][r]
                std::copy(a_i.begin(), a_i.end(), a_seq + r0 * n_in);
                const float factor = wa.weight * m->scale;
                for (int64_t o = 0; o < n_out; ++o) {
                    for (int64_t j = 0; j < m->rank; ++j) b_seq[o * R + r0 + j] = factor * b_i[size_t(o * m->rank + j)];
                }
                r0 += m->rank;
            }
        }
        if (type == GGML_TYPE_F32) {
            ggml_backend_tensor_set(term.a, a.data(), 0, ggml_nbytes(term.a));
            ggml_backend_tensor_set(term.b, b.data(), 0, ggml_nbytes(term.b));
        } else {
            std::vector<ggml_fp16_t> half(std::max(a.size(), b.size()));
            ggml_fp32_to_fp16_row(a.data(), half.data(), int64_t(a.size()));
            ggml_backend_tensor_set(term.a, half.data(), 0, ggml_nbytes(term.a));
            ggml_fp32_to_fp16_row(b.data(), half.data(), int64_t(b.size()));
            ggml_backend_tensor_set(term.b, half.data(), 0, ggml_nbytes(term.b));
        }
    }
}

Mixture::~Mixture() {
    if (folded_buffer_) ggml_backend_buffer_free(folded_buffer_);
    if (folded_ctx_) ggml_free(folded_ctx_);
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

size_t Mixture::bytes() const {
    return (buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0) +
           (folded_buffer_ ? ggml_backend_buffer_get_size(folded_buffer_) : 0);
}

bool Mixture::foldable(const Model & model) const {
    (void)model;
    if (n_mix_ != 1 || terms_.empty()) return false;
    for (const auto & [base, term] : terms_) {
        if (base->type != GGML_TYPE_F32 && base->type != GGML_TYPE_F16 && base->type != GGML_TYPE_BF16) return false;
    }
    return true;
}

void Mixture::fold(Session & session) {
    if (folded_buffer_ || !foldable(session.model())) return;
    ggml_init_params params = {terms_.size() * ggml_tensor_overhead(), nullptr, true};
    folded_ctx_ = ggml_init(params);
    std::map<const ggml_tensor *, ggml_tensor *> folded;
    for (const auto & [base, term] : terms_) folded[base] = ggml_dup_tensor(folded_ctx_, base);
    folded_buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(folded_ctx_, ggml_backend_dev_buffer_type(session.model().device()));
    if (!folded_buffer_) throw std::runtime_error("out of memory: cannot allocate folded weights");
    // One small graph: for each weight, dst = W + B A, with B A of shape [n_in, n_out] like W.
    session.compute(
        [&](ggml_context * ctx, ggml_cgraph * graph) {
            for (const auto & [base, term] : terms_) {
                ggml_tensor * a = ggml_reshape_2d(ctx, term.a, term.a->ne[0], term.a->ne[1]);  // [n_in, R]
                ggml_tensor * b = ggml_reshape_2d(ctx, term.b, term.b->ne[0], term.b->ne[1]);  // [R, n_out]
                ggml_tensor * a_t = ggml_cont(ctx, ggml_transpose(ctx, a));                     // [R, n_in]
                ggml_tensor * delta = ggml_mul_mat(ctx, a_t, b);                                // [n_in, n_out]
                ggml_tensor * sum = ggml_add(ctx, delta, ggml_cast(ctx, const_cast<ggml_tensor *>(base), GGML_TYPE_F32));
                ggml_build_forward_expand(graph, ggml_cpy(ctx, sum, folded[base]));
            }
        },
        terms_.size() * 8 + 16);
    for (auto & [base, term] : terms_) term.folded = folded[base];
}

}  // namespace logo
