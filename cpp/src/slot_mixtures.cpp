#include "slot_mixtures.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace logo::core {

std::unique_ptr<SlotMixtures> make_slot_mixtures(const Model & model, int n_slots, const std::vector<const Adapter *> & pool,
                                                 SlotLayout layout) {
    if (layout == SlotLayout::automatic) {
        // Bytes each step reads: the pooled stacks once, or one slice of at least kRankQuantum ranks per slot.
        std::map<const ggml_tensor *, int> pool_ranks;
        for (const Adapter * a : pool) {
            for (const LoraMatrix & m : a->matrices) pool_ranks[m.base] += m.rank;
        }
        bool pooled = !pool_ranks.empty();
        for (const auto & [base, r] : pool_ranks) pooled = pooled && round_up_ranks(r) <= n_slots * kRankQuantum;
        layout = pooled ? SlotLayout::pooled : SlotLayout::stacked;
    }
    if (layout == SlotLayout::pooled) return std::make_unique<PooledMixtures>(model, n_slots, pool);
    return std::make_unique<StackedMixtures>(model, n_slots);
}

SlotMixtures::SlotMixtures(int n_slots) : n_slots_(n_slots) {
    if (n_slots < 1) throw std::invalid_argument("the number of slots must be positive");
}

void SlotMixtures::check_slot(int slot) const {
    if (slot < 0 || slot >= n_slots_) {
        throw std::invalid_argument("slot " + std::to_string(slot) + " is out of range [0, " + std::to_string(n_slots_) + ")");
    }
}

void SlotMixtures::check_slot_count(int n) const {
    if (n < 0 || n > n_slots_) throw std::invalid_argument("slot count out of range");
}

void SlotMixtures::move(Session & session, int from, int to) {
    check_slot(from);
    check_slot(to);
    if (from == to) return;
    clear(to);
    copy_slot(session, from, to);
    clear(from);
}

void zero_slice(ggml_tensor * t, int i) { ggml_backend_tensor_memset(t, 0, t->nb[2] * size_t(i), t->nb[2]); }

StackedMixtures::StackedMixtures(const Model & model, int n_slots)
    : SlotMixtures(n_slots), model_(model), type_(mixture_type_for(model)) {}

void upload_values(ggml_tensor * t, size_t offset, const std::vector<float> & values) {
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, values.data(), offset, sizeof(float) * values.size());
        return;
    }
    std::vector<ggml_fp16_t> half(values.size());
    ggml_fp32_to_fp16_row(values.data(), half.data(), int64_t(values.size()));
    ggml_backend_tensor_set(t, half.data(), offset, sizeof(ggml_fp16_t) * half.size());
}

void StackedMixtures::grow(const std::map<const ggml_tensor *, int> & capacity) {
    // The new layout: every existing stack, widened where asked, plus the new weights.
    std::map<const ggml_tensor *, Stack> next;
    for (const auto & [base, stack] : stacks_) {
        Stack s;
        s.n_in = stack.n_in;
        s.n_out = stack.n_out;
        s.rank = stack.rank;
        s.used = stack.used;
        next[base] = s;
    }
    for (const auto & [base, need] : capacity) {
        Stack & s = next[base];
        if (s.used.empty()) {
            s.n_in = base->ne[0];
            s.n_out = base->ne[1];
            s.used.assign(size_t(n_slots_), 0);
        }
        s.rank = std::max(s.rank, round_up_ranks(need));
    }

    ggml_init_params params = {2 * next.size() * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    for (auto & [base, s] : next) {
        s.a = ggml_new_tensor_3d(ctx, type_, s.n_in, s.rank, n_slots_);
        s.b = ggml_new_tensor_3d(ctx, type_, s.rank, s.n_out, n_slots_);
    }
    TensorBuffer storage(ctx, model_.device(), "the slots' adapter mixtures");
    // Every slot's old ranks keep their place in its slice: A's rows, B's leading columns.
    for (const auto & [base, old] : stacks_) {
        copy_into_grown(old.a, next[base].a);
        copy_into_grown(old.b, next[base].b);
    }
    storage_ = std::move(storage);
    stacks_ = std::move(next);
    terms_.clear();
}

void StackedMixtures::set(int slot, const Selection & selection) {
    check_slot(slot);
    for (const auto & [base, s] : stacks_) {
        if (s.used[size_t(slot)] != 0) throw std::logic_error("slot " + std::to_string(slot) + " is not clear");
    }
    // Rank each weight needs: the sum over the selected adapters that adapt it.
    std::map<const ggml_tensor *, int> need;
    for (const WeightedAdapter & wa : selection) {
        if (!wa.adapter) throw std::invalid_argument("null adapter in a mixture");
        for (const LoraMatrix & m : wa.adapter->matrices) need[m.base] += m.rank;
    }
    std::map<const ggml_tensor *, int> too_small;
    for (const auto & [base, r] : need) {
        auto it = stacks_.find(base);
        if (it == stacks_.end() || it->second.rank < r) too_small[base] = r;
    }
    if (!too_small.empty()) grow(too_small);

    for (const auto & [base, r] : need) {
        Stack & s = stacks_.at(base);
        const int64_t R = s.rank;
        std::vector<float> a(size_t(s.n_in * R), 0.0f), b(size_t(R * s.n_out), 0.0f);  // [R][n_in], [n_out][R]
        int64_t r0 = 0;
        for (const WeightedAdapter & wa : selection) {
            const LoraMatrix * m = wa.adapter->find(base);
            if (!m) continue;
            const std::vector<float> a_i = to_host_f32(m->a);  // [rank][n_in]
            const std::vector<float> b_i = to_host_f32(m->b);  // [n_out][rank]
            std::copy(a_i.begin(), a_i.end(), a.begin() + r0 * s.n_in);
            const float factor = wa.weight * m->scale;
            for (int64_t o = 0; o < s.n_out; ++o) {
                for (int64_t j = 0; j < m->rank; ++j) b[size_t(o * R + r0 + j)] = factor * b_i[size_t(o * m->rank + j)];
            }
            r0 += m->rank;
        }
        upload_values(s.a, s.a->nb[2] * size_t(slot), a);
        upload_values(s.b, s.b->nb[2] * size_t(slot), b);
        s.used[size_t(slot)] = r;
    }
}

void StackedMixtures::clear(int slot) {
    check_slot(slot);
    for (auto & [base, s] : stacks_) {
        if (s.used[size_t(slot)] == 0) continue;
        zero_slice(s.a, slot);
        zero_slice(s.b, slot);
        s.used[size_t(slot)] = 0;
    }
}

void StackedMixtures::copy_slot(Session & session, int from, int to) {
    size_t n_copies = 0;
    for (const auto & [base, s] : stacks_) n_copies += s.used[size_t(from)] ? 2 : 0;
    if (n_copies > 0) {
        session.compute([&](ggml_context * ctx) {
            std::vector<ggml_tensor *> copies;
            for (const auto & [base, s] : stacks_) {
                if (s.used[size_t(from)] == 0) continue;
                for (ggml_tensor * t : {s.a, s.b}) {
                    graph_reserve(ctx, 8);
                    // A slot's slice is contiguous: [ne0, ne1] at offset slot * nb[2].
                    ggml_tensor * src = ggml_view_2d(ctx, t, t->ne[0], t->ne[1], t->nb[1], t->nb[2] * size_t(from));
                    ggml_tensor * dst = ggml_view_2d(ctx, t, t->ne[0], t->ne[1], t->nb[1], t->nb[2] * size_t(to));
                    copies.push_back(ggml_cpy(ctx, src, dst));
                }
            }
            return copies;
        });
    }
    for (auto & [base, s] : stacks_) s.used[size_t(to)] = s.used[size_t(from)];
}

const LowRankTerms * StackedMixtures::terms(int n) {
    check_slot_count(n);
    terms_.clear();
    for (const auto & [base, s] : stacks_) {
        for (int slot = 0; slot < n; ++slot) {
            if (s.used[size_t(slot)] == 0) continue;
            LowRankTerm term;
            term.a = s.a;
            term.b = s.b;
            terms_[base] = term;
            break;
        }
    }
    return terms_.empty() ? nullptr : &terms_;
}

}  // namespace logo::core
