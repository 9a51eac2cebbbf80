#include "mixture.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace logo::core {

ggml_type mixture_type_for(const Model & model) {
    return model.weights().layers.at(0).wq->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
}

namespace {

void upload(ggml_tensor * t, const std::vector<float> & values) {
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, values.data(), 0, ggml_nbytes(t));
        return;
    }
    if (t->type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> half(values.size());
        ggml_fp32_to_fp16_row(values.data(), half.data(), int64_t(values.size()));
        ggml_backend_tensor_set(t, half.data(), 0, ggml_nbytes(t));
        return;
    }
    std::vector<uint8_t> packed(ggml_nbytes(t));
    const int64_t n_per_row = t->ne[0];
    ggml_quantize_chunk(t->type, values.data(), packed.data(), 0, int64_t(values.size()) / n_per_row, n_per_row, nullptr);
    ggml_backend_tensor_set(t, packed.data(), 0, packed.size());
}

// Copies adapter matrix m into rows [r0, r0 + rank) of a concatenated A ([R][n_in]) and columns of a
// concatenated B ([n_out][R]), B scaled by `factor`.
void place(const LoraMatrix & m, float factor, int64_t r0, int64_t R, float * a, float * b) {
    const int64_t n_in = m.base->ne[0], n_out = m.base->ne[1];
    const std::vector<float> a_i = to_host_f32(m.a);  // [r][n_in]
    const std::vector<float> b_i = to_host_f32(m.b);  // [n_out][r]
    std::copy(a_i.begin(), a_i.end(), a + r0 * n_in);
    for (int64_t o = 0; o < n_out; ++o) {
        for (int64_t j = 0; j < m.rank; ++j) b[o * R + r0 + j] = factor * b_i[size_t(o * m.rank + j)];
    }
}

// What one adapted weight needs: the adapters touching it (in first-seen order) and each sequence's rank.
struct WeightPlan {
    std::vector<const Adapter *> adapters;
    std::vector<int> rank_per_sequence;
    int union_rank = 0;
    int max_rank = 0;
    bool shared = false;  // one pair for all sequences, with per-sequence slot weights
    ggml_type type = GGML_TYPE_F32;
    int64_t rank = 0;     // rows of the stored pair (padded for Q8_0 blocks)
};

}  // namespace

Mixture::Mixture(const Model & model, const std::vector<Selection> & per_sequence, ggml_type type)
    : n_mix_(int(per_sequence.size())) {
    if (per_sequence.empty()) throw std::invalid_argument("a mixture needs at least one selection");
    if (type != GGML_TYPE_F32 && type != GGML_TYPE_F16) throw std::invalid_argument("mixtures are F32 or F16");

    std::map<const ggml_tensor *, WeightPlan> plans;
    for (size_t s = 0; s < per_sequence.size(); ++s) {
        for (const WeightedAdapter & wa : per_sequence[s]) {
            if (!wa.adapter) throw std::invalid_argument("null adapter in a mixture");
            for (const LoraMatrix & m : wa.adapter->matrices) {
                WeightPlan & plan = plans[m.base];
                plan.rank_per_sequence.resize(per_sequence.size(), 0);
                plan.rank_per_sequence[s] += m.rank;
                plan.max_rank = std::max(plan.max_rank, plan.rank_per_sequence[s]);
                if (std::find(plan.adapters.begin(), plan.adapters.end(), wa.adapter) == plan.adapters.end()) {
                    plan.adapters.push_back(wa.adapter);
                    plan.union_rank += m.rank;
                }
            }
        }
    }
    if (plans.empty()) return;  // nothing adapted: no terms

    // Instances of one batch often share adapters. Stacking one pair per sequence reads n_mix * R
    // rows per step; one shared pair over the union reads R_union rows but multiplies every token by
    // all of them. Share when that at most doubles the multiply-adds.
    for (auto & [base, plan] : plans) {
        plan.shared = n_mix_ > 1 && plan.union_rank <= 2 * plan.max_rank;
        plan.type = type;
        plan.rank = plan.shared ? plan.union_rank : plan.max_rank;
        // Per-sequence stacks are read whole by every decode step of a batch: over a non-F32 base they
        // are stored Q8_0 (half of F16's bytes; its rounding, ~0.3% of the adapter term, is below the
        // base weights' own). Q8_0 rows come in blocks of 32, so the rank is padded with zero rows.
        if (!plan.shared && n_mix_ > 1 && type == GGML_TYPE_F16 && base->ne[0] % 32 == 0) {
            plan.type = GGML_TYPE_Q8_0;
            plan.rank = GGML_PAD(plan.rank, 32);
        }
    }

    ggml_init_params params = {3 * plans.size() * ggml_tensor_overhead(), nullptr, true};
    ctx_ = ggml_init(params);
    for (const auto & [base, plan] : plans) {
        LowRankTerm term;
        const int64_t R = plan.rank;
        const int64_t stacks = plan.shared ? 1 : n_mix_;
        term.a = ggml_new_tensor_3d(ctx_, plan.type, base->ne[0], R, stacks);  // [n_in, R, stacks]
        term.b = ggml_new_tensor_3d(ctx_, plan.type, R, base->ne[1], stacks);  // [R, n_out, stacks]
        if (plan.shared) term.slot_weights = ggml_new_tensor_3d(ctx_, GGML_TYPE_F32, R, 1, n_mix_);
        terms_[base] = term;
    }
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, ggml_backend_dev_buffer_type(model.device()));
    if (!buffer_) throw std::runtime_error("out of memory: cannot allocate an adapter mixture");

    for (const auto & [base, term] : terms_) {
        const WeightPlan & plan = plans[base];
        const int64_t n_in = base->ne[0], n_out = base->ne[1], R = term.a->ne[1];
        std::vector<float> a(size_t(ggml_nelements(term.a)), 0.0f), b(size_t(ggml_nelements(term.b)), 0.0f);
        if (plan.shared) {
            // The union's pairs at scale alpha/r; each sequence weights the rank slots of its adapters.
            std::vector<float> slots(size_t(R * n_mix_), 0.0f);
            int64_t r0 = 0;
            for (const Adapter * adapter : plan.adapters) {
                const LoraMatrix * m = adapter->find(base);
                place(*m, m->scale, r0, R, a.data(), b.data());
                for (size_t s = 0; s < per_sequence.size(); ++s) {
                    for (const WeightedAdapter & wa : per_sequence[s]) {
                        if (wa.adapter != adapter) continue;
                        for (int64_t j = 0; j < m->rank; ++j) slots[s * size_t(R) + size_t(r0 + j)] += wa.weight;
                    }
                }
                r0 += m->rank;
            }
            ggml_backend_tensor_set(term.slot_weights, slots.data(), 0, ggml_nbytes(term.slot_weights));
        } else {
            // One concatenation per sequence; zero rows of A and columns of B pad the shorter ones.
            for (size_t s = 0; s < per_sequence.size(); ++s) {
                int64_t r0 = 0;
                for (const WeightedAdapter & wa : per_sequence[s]) {
                    const LoraMatrix * m = wa.adapter->find(base);
                    if (!m) continue;
                    place(*m, wa.weight * m->scale, r0, R, a.data() + s * size_t(n_in * R), b.data() + s * size_t(R * n_out));
                    r0 += m->rank;
                }
            }
        }
        upload(term.a, a);
        upload(term.b, b);
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
    if (n_mix_ != 1 || terms_.empty()) return false;  // (a single selection is never stored shared)
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

}  // namespace logo::core
