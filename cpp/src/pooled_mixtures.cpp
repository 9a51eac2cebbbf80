// The pooled slot layout (slot_mixtures.h): the pool stacked once per adapted weight, per-slot rank weights.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "slot_mixtures.h"

namespace logo::core {

PooledMixtures::PooledMixtures(const Model & model, int n_slots, const std::vector<const Adapter *> & pool)
    : SlotMixtures(n_slots), model_(model), type_(mixture_type_for(model)) {
    append(pool);
}

const PooledMixtures::Entry * PooledMixtures::find(const Adapter * adapter) const {
    // The name guards against a removed adapter whose memory a new one reuses.
    for (const Entry & e : entries_) {
        if (e.adapter == adapter && e.name == adapter->name) return &e;
    }
    return nullptr;
}

void PooledMixtures::append(const std::vector<const Adapter *> & adapters) {
    std::vector<const Adapter *> fresh;
    for (const Adapter * a : adapters) {
        if (!a) throw std::invalid_argument("null adapter in a mixture");
        if (!find(a) && std::find(fresh.begin(), fresh.end(), a) == fresh.end()) fresh.push_back(a);
    }
    if (fresh.empty()) return;

    // The new layout: existing stacks keep their ranks in place; new adapters go after them.
    std::map<const ggml_tensor *, Stack> next;
    for (const auto & [base, s] : stacks_) {
        Stack t;
        t.n_in = s.n_in;
        t.n_out = s.n_out;
        t.filled = s.filled;
        t.rank = s.rank;
        t.used = s.used;
        next[base] = t;
    }
    std::vector<Entry> added;
    for (const Adapter * a : fresh) {
        Entry e{a, a->name, {}};
        for (const LoraMatrix & m : a->matrices) {
            Stack & t = next[m.base];
            if (t.used.empty()) {
                t.n_in = m.base->ne[0];
                t.n_out = m.base->ne[1];
                t.used.assign(size_t(n_slots_), 0);
            }
            e.offset[m.base] = t.filled;
            t.filled += m.rank;
        }
        added.push_back(std::move(e));
    }
    bool realloc = false;
    for (auto & [base, t] : next) {
        const int need = round_up_ranks(t.filled);
        realloc = realloc || need > t.rank;
        t.rank = std::max(t.rank, need);
    }

    if (realloc) {
        ggml_init_params params = {3 * next.size() * ggml_tensor_overhead(), nullptr, true};
        ggml_context * ctx = ggml_init(params);
        for (auto & [base, t] : next) {
            t.a = ggml_new_tensor_3d(ctx, type_, t.n_in, t.rank, 1);
            t.b = ggml_new_tensor_3d(ctx, type_, t.rank, t.n_out, 1);
            t.slot_weights = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, t.rank, 1, n_slots_);
        }
        TensorBuffer storage(ctx, model_.device(), "the pooled adapter stacks");
        // The adapters already stacked and every slot's rank weights keep their ranks (this happens when the
        // pool grows, not per request).
        for (const auto & [base, old] : stacks_) {
            const Stack & t = next[base];
            copy_into_grown(old.a, t.a);
            copy_into_grown(old.b, t.b);
            copy_into_grown(old.slot_weights, t.slot_weights);
        }
        storage_ = std::move(storage);
    } else {
        for (auto & [base, t] : next) {
            const Stack & old = stacks_.at(base);
            t.a = old.a;
            t.b = old.b;
            t.slot_weights = old.slot_weights;
        }
    }
    stacks_ = std::move(next);
    terms_.clear();

    // Upload the new adapters: A's rows go in place; B's columns are strided, so each touched B is rewritten
    // whole from the host (once per growth of the pool, not per request).
    std::map<const ggml_tensor *, std::vector<float>> b_host;
    for (const Entry & e : added) {
        for (const LoraMatrix & m : e.adapter->matrices) {
            const Stack & t = stacks_.at(m.base);
            const int r0 = e.offset.at(m.base);
            upload_values(t.a, t.a->nb[1] * size_t(r0), to_host_f32(m.a));  // [rank][n_in]: rows r0.. of A
            std::vector<float> & b = b_host[m.base];
            if (b.empty()) b = to_host_f32(t.b);                             // [n_out][R]
            const std::vector<float> b_i = to_host_f32(m.b);                 // [n_out][rank]
            for (int64_t o = 0; o < t.n_out; ++o) {
                for (int j = 0; j < m.rank; ++j) b[size_t(o * t.rank + r0 + j)] = m.scale * b_i[size_t(o * m.rank + j)];
            }
        }
        entries_.push_back(e);
    }
    for (const auto & [base, b] : b_host) upload_values(stacks_.at(base).b, 0, b);
}

void PooledMixtures::set(int slot, const Selection & selection) {
    check_slot(slot);
    for (const auto & [base, s] : stacks_) {
        if (s.used[size_t(slot)]) throw std::logic_error("slot " + std::to_string(slot) + " is not clear");
    }
    std::vector<const Adapter *> adapters;
    for (const WeightedAdapter & wa : selection) adapters.push_back(wa.adapter);
    append(adapters);

    // Each weight's row of rank weights for this slot: w_i on adapter i's ranks.
    std::map<const ggml_tensor *, std::vector<float>> rows;
    for (const WeightedAdapter & wa : selection) {
        const Entry * e = find(wa.adapter);
        for (const LoraMatrix & m : wa.adapter->matrices) {
            std::vector<float> & row = rows[m.base];
            if (row.empty()) row.assign(size_t(stacks_.at(m.base).rank), 0.0f);
            const int r0 = e->offset.at(m.base);
            for (int j = 0; j < m.rank; ++j) row[size_t(r0 + j)] += wa.weight;
        }
    }
    for (auto & [base, row] : rows) {
        Stack & s = stacks_.at(base);
        upload_values(s.slot_weights, s.slot_weights->nb[2] * size_t(slot), row);
        s.used[size_t(slot)] = 1;
    }
}

void PooledMixtures::clear(int slot) {
    check_slot(slot);
    for (auto & [base, s] : stacks_) {
        if (!s.used[size_t(slot)]) continue;
        zero_slice(s.slot_weights, slot);
        s.used[size_t(slot)] = 0;
    }
}

void PooledMixtures::copy_slot(Session &, int from, int to) {
    // A slot's rank weights are R floats per weight: through the host is cheaper than a graph.
    for (auto & [base, s] : stacks_) {
        if (!s.used[size_t(from)]) continue;
        std::vector<float> row(size_t(s.rank));
        ggml_backend_tensor_get(s.slot_weights, row.data(), s.slot_weights->nb[2] * size_t(from), sizeof(float) * row.size());
        ggml_backend_tensor_set(s.slot_weights, row.data(), s.slot_weights->nb[2] * size_t(to), sizeof(float) * row.size());
        s.used[size_t(to)] = 1;
    }
}

const LowRankTerms * PooledMixtures::terms(int n) {
    check_slot_count(n);
    terms_.clear();
    for (const auto & [base, s] : stacks_) {
        if (std::any_of(s.used.begin(), s.used.begin() + n, [](char u) { return u != 0; })) {
            LowRankTerm term;
            term.a = s.a;
            term.b = s.b;
            term.slot_weights = s.slot_weights;
            term.per_stream = true;
            terms_[base] = term;
        }
    }
    return terms_.empty() ? nullptr : &terms_;
}

}  // namespace logo::core
