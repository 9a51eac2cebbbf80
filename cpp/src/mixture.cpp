#include "mixture.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <map>
#include <stdexcept>

#include "backend.h"
#include "stochastic_rounding.h"

namespace logo::core {

ggml_type mixture_type_for(const Model & model) {
    return model.weights().layers.at(0).wq->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
}

namespace {

// Weights of one block that read the same input, whose A's one matmul can serve: the attention
// projections read the normalised block input, gate and up the normalised FFN input.
std::pair<int, std::string> input_of(const LoraMatrix & m) {
    if (m.module == "attn_q" || m.module == "attn_k" || m.module == "attn_v") return {m.layer, "attn_in"};
    if (m.module == "ffn_gate" || m.module == "ffn_up") return {m.layer, "ffn_in"};
    return {m.layer, m.module};
}

int module_order(const std::string & module) {
    const auto & all = adaptable_modules();
    return int(std::find(all.begin(), all.end(), module) - all.begin());
}

// Largest magnitude F16 holds; a Q8_0 block scale (max / 127) is F16 too.
constexpr float kF16Max = 65504.0f;

bool is_16bit(ggml_type t) { return t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

// How one input group's pairs are stored: the types of A and of the B's, and the multiple each weight's
// rank is padded to with zero rows (Q8_0 rows come in blocks of 32).
struct PairLayout {
    ggml_type a = GGML_TYPE_F32;
    ggml_type b = GGML_TYPE_F32;
    int rank_multiple = 1;
};

// The types a mixture computes in (the README's "How a mixture is applied" says the same):
// - over an F32 base: F32, exact;
// - over a quantized base: Q8_0, ranks padded to 32. Every matmul of such a base already rounds its
//   activations to 8 bits, and Q8_0 is the cheapest type per element in ggml's decode matmuls: 1.06 bytes
//   a weight, no scalar tail (F16/BF16/F32 rows whose length is not a multiple of the SIMD step, such as a B
//   of rank 8, 40 or 160, run one element at a time), and per element what the base's own Q4/Q8 kernels
//   cost. Except a tiny pair (`tiny`: see Mixture()), which keeps the adapters' own types as stored, the
//   types llama.cpp computes them in, since there the difference cannot be measured;
// - over an F16/BF16 base (where long single generations fold the mixture into the weights): the adapters'
//   own type where they agree on F16, BF16 or Q8_0, else F16;
// - per-sequence stacks of a batch over any but an F32 base, which every decode step reads whole: Q8_0.
// Measurements: docs/mixtures-on-quantized-bases.md.
PairLayout pair_layout(ggml_type base_type, const std::vector<ggml_type> & types_a, const std::vector<ggml_type> & types_b,
                       bool stacked, bool tiny) {
    if (base_type == GGML_TYPE_F32) return {GGML_TYPE_F32, GGML_TYPE_F32, 1};
    auto common = [](const std::vector<ggml_type> & types, ggml_type otherwise) {
        const bool same = std::all_of(types.begin(), types.end(), [&](ggml_type t) { return t == types.front(); });
        return same ? types.front() : otherwise;
    };
    if (stacked) return {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, 32};
    if (!is_16bit(base_type)) {
        if (!tiny) return {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, 32};
        return {common(types_a, GGML_TYPE_F32), common(types_b, GGML_TYPE_F32), 1};
    }
    auto own = [&](const std::vector<ggml_type> & types) {
        const ggml_type t = common(types, GGML_TYPE_F16);
        return is_16bit(t) || t == GGML_TYPE_Q8_0 ? t : GGML_TYPE_F16;
    };
    // A Q8_0 B keeps that type only where its rows (the rank) fill whole blocks; see Mixture().
    return {own(types_a), own(types_b), 1};
}

// Weight elements one decode step multiplies: every block's linear maps and the output head.
int64_t step_elements(const Model & model) {
    const ModelWeights & w = model.weights();
    int64_t n = ggml_nelements(w.output);
    for (const LayerWeights & l : w.layers) {
        for (const ggml_tensor * t : {l.wq, l.wk, l.wv, l.wo, l.ffn_gate, l.ffn_up, l.ffn_down}) n += ggml_nelements(t);
    }
    return n;
}

// max |x_i| over n values, in 8 lanes so that the compiler vectorises it (max is exact in any order).
float largest_magnitude(const float * x, int64_t n) {
    float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int l = 0; l < 8; ++l) lanes[l] = std::max(lanes[l], std::fabs(x[i + l]));
    }
    for (; i < n; ++i) lanes[0] = std::max(lanes[0], std::fabs(x[i]));
    return *std::max_element(lanes, lanes + 8);
}

// A value range the type cannot hold (a huge user weight) falls back to F32 rather than overflowing.
ggml_type fit_range(ggml_type type, const std::vector<float> & values) {
    if (type != GGML_TYPE_F16 && type != GGML_TYPE_Q8_0) return type;
    const float limit = type == GGML_TYPE_F16 ? kF16Max : kF16Max * 127.0f;
    return largest_magnitude(values.data(), int64_t(values.size())) < limit ? type : GGML_TYPE_F32;
}

// ggml's reference Q8_0 rounding (quantize_row_q8_0_ref: d = amax / 127 stored F16, q = roundf(x / d)), bit
// for bit, written so that the compiler vectorises it: the reference calls roundf per element and made
// building a k = 20 mixture several times slower than the decode steps it saves. All-zero blocks (the
// padding of ranks to 32) stay the zero bytes `out` already holds.
void quantize_q8_0(const float * x, uint8_t * out, int64_t n) {
    constexpr int64_t kBlock = 32;
    constexpr size_t kBytes = sizeof(ggml_fp16_t) + kBlock;
    for (int64_t i = 0; i < n / kBlock; ++i) {
        const float * v = x + i * kBlock;
        const float amax = largest_magnitude(v, kBlock);
        if (amax == 0.0f) continue;
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const ggml_fp16_t half = ggml_fp32_to_fp16(d);
        uint8_t * block = out + size_t(i) * kBytes;
        std::memcpy(block, &half, sizeof(half));
        int8_t * q = reinterpret_cast<int8_t *>(block + sizeof(half));
        for (int64_t j = 0; j < kBlock; ++j) {
            // roundf: the truncation plus one away from zero when the exact remainder is at least a half.
            const float scaled = v[j] * id;
            const int32_t whole = int32_t(scaled);
            const float rest = scaled - float(whole);
            q[j] = int8_t(whole + int32_t(rest >= 0.5f) - int32_t(rest <= -0.5f));
        }
    }
}

void upload(ggml_tensor * t, const std::vector<float> & values) {
    std::vector<uint8_t> packed(ggml_nbytes(t));
    const int64_t n_per_row = t->ne[0];
    if (t->type == GGML_TYPE_Q8_0) {
        quantize_q8_0(values.data(), packed.data(), int64_t(values.size()));
    } else {
        ggml_quantize_chunk(t->type, values.data(), packed.data(), 0, int64_t(values.size()) / n_per_row, n_per_row, nullptr);
    }
    ggml_backend_tensor_set(t, packed.data(), 0, packed.size());
}

// One adapted weight: the adapters touching it (first-seen order), each sequence's rank, and where its
// rows lie in its input group's concatenated A.
struct WeightPlan {
    const ggml_tensor * base = nullptr;
    int order = 0;  // position of its module in a block
    std::pair<int, std::string> input, key;  // its input group (input_of), and its own (layer, module)
    std::vector<const Adapter *> adapters;
    std::vector<int> rank_per_sequence;
    int union_rank = 0;
    int max_rank = 0;
    int64_t row0 = 0;
    int64_t rows = 0;
    ggml_type type_b = GGML_TYPE_F32;
};

// Weights reading one input: one A [n_in, rows, stacks] for all of them.
struct GroupPlan {
    std::vector<WeightPlan *> weights;  // in block order (q, k, v / gate, up)
    bool shared = false;                // one pair for all sequences, with per-sequence slot weights
    ggml_type type_a = GGML_TYPE_F32;
    int64_t rows = 0;
    ggml_tensor * a = nullptr;
    ggml_tensor * slot_weights = nullptr;
};

// Copies adapter matrix m into rows a_row.. of a concatenated A ([rows][n_in]), scaled by `factor`, and
// into columns b_col.. of a concatenated B ([n_out][R]) as it is: llama.cpp scales the product B (A x),
// and a scale on A keeps B's values (often small after training) away from F16's subnormal range.
void place(const LoraMatrix & m, float factor, int64_t a_row, float * a, int64_t b_col, int64_t R, float * b) {
    const int64_t n_in = m.base->ne[0], n_out = m.base->ne[1];
    const std::vector<float> a_i = to_host_f32(m.a);  // [r][n_in]
    const std::vector<float> b_i = to_host_f32(m.b);  // [n_out][r]
    for (size_t j = 0; j < a_i.size(); ++j) a[size_t(a_row * n_in) + j] = factor * a_i[j];
    for (int64_t o = 0; o < n_out; ++o) {
        for (int64_t j = 0; j < m.rank; ++j) b[o * R + b_col + j] = b_i[size_t(o * m.rank + j)];
    }
}

}  // namespace

Mixture::Mixture(const Model & model, const std::vector<Selection> & per_sequence, bool exact_pair)
    : n_mix_(int(per_sequence.size())) {
    if (per_sequence.empty()) throw std::invalid_argument("a mixture needs at least one selection");
    const ggml_type base_type = model.weights().layers.at(0).wq->type;

    std::map<const ggml_tensor *, WeightPlan> plans;
    std::map<std::pair<int, std::string>, GroupPlan> groups;
    for (size_t s = 0; s < per_sequence.size(); ++s) {
        for (const WeightedAdapter & wa : per_sequence[s]) {
            if (!wa.adapter) throw std::invalid_argument("null adapter in a mixture");
            for (const LoraMatrix & m : wa.adapter->matrices) {
                WeightPlan & plan = plans[m.base];
                if (!plan.base) {
                    plan.base = m.base;
                    plan.order = module_order(m.module);
                    plan.input = input_of(m);
                    plan.key = {m.layer, m.module};
                }
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

    // A pair of at most 0.4% of the base's per-step weight elements keeps the adapters' own types on a
    // quantized base, so that one pool adapter computes exactly what llama.cpp computes. Its cost against the
    // Q8_0 form stays below what a benchmark here resolves: one rank-8 F16 adapter on attn_q/attn_v of all 30
    // SmolLM2 blocks (0.34%, the shipped pool's shape) costs 7.1 us a block in its own types and 5.6 us as a
    // padded Q8_0 pair (1 thread; the scalar tail of its 8-long B rows dominates both), 0.6% of a step apart
    // (docs/mixtures-on-quantized-bases.md). Two such adapters are not tiny.
    int64_t pair_elements = 0;
    for (const auto & [base, plan] : plans) pair_elements += int64_t(plan.union_rank) * (base->ne[0] + base->ne[1]);
    const bool tiny = pair_elements * 250 <= step_elements(model);
    // A tiny pair in the adapters' own types also keeps one A per weight, as llama.cpp has it: ggml picks
    // its kernel by the number of rows (tinyBLAS takes F32/F16 products of 4k rows only), and only equal
    // shapes give llama.cpp's summation order, hence its logits bit for bit.
    const bool own_types = tiny && base_type != GGML_TYPE_F32 && !is_16bit(base_type) && n_mix_ == 1;
    for (auto & [base, plan] : plans) groups[own_types ? plan.key : plan.input].weights.push_back(&plan);

    for (auto & [key, group] : groups) {
        auto & ws = group.weights;
        std::sort(ws.begin(), ws.end(), [](const WeightPlan * x, const WeightPlan * y) { return x->order < y->order; });
        // Instances of one batch often share adapters. Stacking one pair per sequence reads n_mix * R
        // rows per step; one shared pair over the union reads R_union rows but multiplies every token by
        // all of them. Share when that at most doubles the multiply-adds.
        int union_rank = 0;
        std::vector<int> per_sequence_rank(per_sequence.size(), 0);
        for (const WeightPlan * w : ws) {
            union_rank += w->union_rank;
            for (size_t s = 0; s < per_sequence.size(); ++s) per_sequence_rank[s] += w->rank_per_sequence[s];
        }
        const int max_rank = *std::max_element(per_sequence_rank.begin(), per_sequence_rank.end());
        group.shared = n_mix_ > 1 && union_rank <= 2 * max_rank;
        std::vector<ggml_type> types_a, types_b;
        for (const WeightPlan * w : ws) {
            for (const Adapter * adapter : w->adapters) {
                types_a.push_back(adapter->find(w->base)->a->type);
                types_b.push_back(adapter->find(w->base)->b->type);
            }
        }
        PairLayout layout = pair_layout(exact_pair ? GGML_TYPE_F32 : base_type, types_a, types_b, n_mix_ > 1 && !group.shared, tiny);
        if (layout.a == GGML_TYPE_Q8_0 && ws.front()->base->ne[0] % 32 != 0) layout = {GGML_TYPE_F16, GGML_TYPE_F16, 1};
        group.type_a = layout.a;
        for (WeightPlan * w : ws) {
            w->row0 = group.rows;
            w->rows = GGML_PAD(group.shared ? w->union_rank : w->max_rank, layout.rank_multiple);
            group.rows += w->rows;
            w->type_b = layout.b == GGML_TYPE_Q8_0 && w->rows % 32 != 0 ? GGML_TYPE_F16 : layout.b;
        }
    }

    size_t n_tensors = 0;
    for (const auto & [key, group] : groups) n_tensors += 2 + group.weights.size();
    ggml_init_params params = {n_tensors * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);

    // Fill on the host first (the final types depend on the values' range), then allocate and upload.
    struct Staged {
        ggml_tensor * tensor;
        std::vector<float> values;
    };
    std::vector<Staged> staged;
    for (auto & [key, group] : groups) {
        const int64_t n_in = group.weights.front()->base->ne[0], R = group.rows;
        const int64_t stacks = group.shared ? 1 : n_mix_;
        std::vector<float> a(size_t(n_in * R * stacks), 0.0f), slots;
        if (group.shared) slots.assign(size_t(R * n_mix_), 0.0f);
        for (WeightPlan * w : group.weights) {
            const int64_t n_out = w->base->ne[1], Rw = w->rows;
            std::vector<float> b(size_t(Rw * n_out * stacks), 0.0f);
            if (group.shared) {
                // The union's pairs at scale alpha/r; each sequence weights the rank slots of its adapters.
                int64_t r0 = 0;
                for (const Adapter * adapter : w->adapters) {
                    const LoraMatrix * m = adapter->find(w->base);
                    place(*m, m->scale, w->row0 + r0, a.data(), r0, Rw, b.data());
                    for (size_t s = 0; s < per_sequence.size(); ++s) {
                        for (const WeightedAdapter & wa : per_sequence[s]) {
                            if (wa.adapter != adapter) continue;
                            for (int64_t j = 0; j < m->rank; ++j) slots[s * size_t(R) + size_t(w->row0 + r0 + j)] += wa.weight;
                        }
                    }
                    r0 += m->rank;
                }
            } else {
                // One concatenation per sequence; zero rows of A and columns of B pad the shorter ones.
                for (size_t s = 0; s < per_sequence.size(); ++s) {
                    int64_t r0 = 0;
                    float * a_s = a.data() + s * size_t(n_in * R);
                    float * b_s = b.data() + s * size_t(Rw * n_out);
                    for (const WeightedAdapter & wa : per_sequence[s]) {
                        const LoraMatrix * m = wa.adapter->find(w->base);
                        if (!m) continue;
                        place(*m, wa.weight * m->scale, w->row0 + r0, a_s, r0, Rw, b_s);
                        r0 += m->rank;
                    }
                }
            }
            LowRankTerm & term = terms_[w->base];
            term.a_row0 = w->row0;
            term.b = ggml_new_tensor_3d(ctx, fit_range(w->type_b, b), Rw, n_out, stacks);  // [rows, n_out, stacks]
            staged.push_back({term.b, std::move(b)});
        }
        group.a = ggml_new_tensor_3d(ctx, fit_range(group.type_a, a), n_in, R, stacks);  // [n_in, rows, stacks]
        staged.push_back({group.a, std::move(a)});
        if (group.shared) {
            group.slot_weights = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, R, 1, n_mix_);
            staged.push_back({group.slot_weights, std::move(slots)});
        }
        for (WeightPlan * w : group.weights) {
            terms_[w->base].a = group.a;
            terms_[w->base].slot_weights = group.slot_weights;
        }
    }
    storage_ = TensorBuffer(ctx, model.device(), "an adapter mixture");  // every tensor is then uploaded whole
    for (const Staged & s : staged) upload(s.tensor, s.values);
}

size_t Mixture::bytes() const {
    size_t n = storage_.bytes();
    for (const TensorBuffer & f : folded_) n += f.bytes();
    return n;
}

bool Mixture::foldable(const Model & model) const {
    (void)model;
    if (n_mix_ != 1 || terms_.empty()) return false;  // (a single selection is never stored shared)
    for (const auto & [base, term] : terms_) {
        if (base->type != GGML_TYPE_F32 && base->type != GGML_TYPE_F16 && base->type != GGML_TYPE_BF16) return false;
    }
    return true;
}

namespace {

// Whether `device` computes ggml_cpy from `from` to `to` for [n_in, 4] tensors (the dequantize and the
// quantize of a fold). ggml's CPU dequantizes every type and quantizes those with a quantizer (from_float).
bool device_copies(ggml_backend_dev_t device, ggml_type from, ggml_type to, int64_t n_in) {
    ggml_init_params params = {3 * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    const bool ok = ggml_backend_dev_supports_op(
        device, ggml_cpy(ctx, ggml_new_tensor_2d(ctx, from, n_in, 4), ggml_new_tensor_2d(ctx, to, n_in, 4)));
    ggml_free(ctx);
    return ok;
}

}  // namespace

ggml_type fold_type(FoldKind kind, ggml_type type) {
    if (kind != FoldKind::upcast || !ggml_is_quantized(type)) return type;
    return GGML_TYPE_Q8_0;
}

void Mixture::check_requantizable(const Model & model, FoldKind kind) const {
    const char * mode = kind == FoldKind::upcast ? "upcast" : "requantize";
    if (n_mix_ != 1) {
        throw std::invalid_argument(std::string("fold = ") + mode + " folds one mixture into the weights, shared by "
                                    "every sequence; got " + std::to_string(n_mix_) +
                                    " different mixtures (use fold = exact for them)");
    }
    for (const auto & [base, term] : terms_) {
        if (base->type == GGML_TYPE_F32) continue;
        const ggml_type to = fold_type(kind, base->type);
        if (!device_copies(model.device(), base->type, GGML_TYPE_F32, base->ne[0]) ||
            !device_copies(model.device(), GGML_TYPE_F32, to, base->ne[0])) {
            throw std::invalid_argument(std::string("fold = ") + mode + " cannot fold into tensor '" + ggml_get_name(base) +
                                        "' of type " + ggml_type_name(base->type) + ": " +
                                        ggml_backend_dev_name(model.device()) + " cannot both dequantize it and quantize " +
                                        ggml_type_name(to) + (to == base->type ? " (ggml has no quantizer for it there)" : "") +
                                        "; use fold = exact" + (kind == FoldKind::upcast ? "" : " or upcast"));
        }
    }
}

void Mixture::fold(Session & session, FoldKind kind, std::vector<FoldedWeight> * keep) {
    if (!folded_.empty()) return;
    const Model & model = session.model();
    if (kind == FoldKind::float_only ? !foldable(model) : n_mix_ != 1 || terms_.empty()) return;
    if (kind != FoldKind::float_only) check_requantizable(model, kind);
    // Stochastic rounding needs the exact sums: the graph writes them in F32, the host quantizes them.
    const bool stochastic = kind == FoldKind::requantize_stochastic;

    // Where each folded weight goes: the buffer type of the weight it copies (a repacked CPU layout keeps its
    // kernels), else the device's. A repacked weight is read from the file, and its copy is computed into a
    // plain staging tensor first, then written through the repacked buffer's set_tensor, which repacks it.
    std::vector<const ggml_tensor *> bases;
    for (const auto & [base, term] : terms_) bases.push_back(base);
    std::sort(bases.begin(), bases.end(), [](const ggml_tensor * x, const ggml_tensor * y) {
        return std::strcmp(ggml_get_name(x), ggml_get_name(y)) < 0;
    });
    // A copy of another type (upcast) goes to the device's plain buffer: the repacked layouts are per type.
    auto target = [&](const ggml_tensor * base) { return fold_type(kind, base->type); };
    std::map<ggml_backend_buffer_type_t, std::vector<const ggml_tensor *>> by_buft;
    for (const ggml_tensor * base : bases) {
        by_buft[target(base) == base->type ? model.repacked_type(base) : nullptr].push_back(base);
    }

    std::map<const ggml_tensor *, ggml_tensor *> folded, source, staged;
    for (auto & [buft, group] : by_buft) {
        ggml_init_params params = {group.size() * ggml_tensor_overhead(), nullptr, true};
        ggml_context * ctx = ggml_init(params);
        for (const ggml_tensor * base : group) {
            folded[base] = ggml_new_tensor(ctx, target(base), ggml_n_dims(base), base->ne);
            ggml_set_name(folded[base], ggml_get_name(base));
        }
        if (buft) {
            folded_.emplace_back(ctx, buft, "folded weights");  // each is then written whole
        } else {
            folded_.emplace_back(ctx, model.device(), "folded weights");
        }
    }
    TensorBuffer plain;  // plain copies of repacked weights and their staging outputs (host memory)
    TensorBuffer exact;  // with stochastic rounding: the F32 sums, on the device
    std::map<const ggml_tensor *, ggml_tensor *> sums;
    if (stochastic) {
        ggml_init_params params = {bases.size() * ggml_tensor_overhead(), nullptr, true};
        ggml_context * ctx = ggml_init(params);
        for (const ggml_tensor * base : bases) sums[base] = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, base->ne[0], base->ne[1]);
        exact = TensorBuffer(ctx, model.device(), "the exact sums of a stochastically rounded fold");
    }
    // Repacked weights: their plain bytes from the file (source), and the staging output of a copy that goes
    // back into the repacked layout (staged).
    std::vector<const ggml_tensor *> repacked_bases;
    for (const ggml_tensor * base : bases) {
        if (model.repacked_type(base)) repacked_bases.push_back(base);
    }
    if (!repacked_bases.empty()) {
        ggml_init_params params = {2 * repacked_bases.size() * ggml_tensor_overhead(), nullptr, true};
        ggml_context * ctx = ggml_init(params);
        for (const ggml_tensor * base : repacked_bases) {
            source[base] = ggml_dup_tensor(ctx, base);
            if (target(base) == base->type) staged[base] = ggml_dup_tensor(ctx, base);
        }
        plain = TensorBuffer(ctx, cpu_device(), "plain copies of repacked weights to fold");
        for (auto & [base, t] : source) {
            const std::vector<uint8_t> bytes = model.plain_bytes(base);
            ggml_backend_tensor_set(t, bytes.data(), 0, bytes.size());
        }
    }

    // One small graph: for each weight, dst = T(T^-1(W) + B A), with B A of shape [n_in, n_out] like W, in F32.
    session.compute([&](ggml_context * ctx) {
        std::vector<ggml_tensor *> outputs;
        for (const ggml_tensor * base : bases) {
            const LowRankTerm & term = terms_.at(base);
            graph_reserve(ctx, 16);
            const int64_t rank = term.b->ne[0];
            ggml_tensor * a = ggml_view_2d(ctx, term.a, term.a->ne[0], rank, term.a->nb[1], term.a->nb[1] * size_t(term.a_row0));  // [n_in, R]
            ggml_tensor * b = ggml_reshape_2d(ctx, term.b, rank, term.b->ne[1]);  // [R, n_out]
            if (a->type != GGML_TYPE_F32) a = ggml_cast(ctx, a, GGML_TYPE_F32);
            if (b->type != GGML_TYPE_F32) b = ggml_cast(ctx, b, GGML_TYPE_F32);
            ggml_tensor * a_t = ggml_cont(ctx, ggml_transpose(ctx, a));                     // [R, n_in]
            ggml_tensor * delta = ggml_mul_mat(ctx, a_t, b);                                // [n_in, n_out]
            ggml_tensor * w = source.count(base) ? source[base] : const_cast<ggml_tensor *>(base);
            if (w->type != GGML_TYPE_F32) w = ggml_cast(ctx, w, GGML_TYPE_F32);             // dequantized
            ggml_tensor * sum = ggml_add(ctx, delta, w);
            ggml_tensor * dst = stochastic ? sums[base] : staged.count(base) ? staged[base] : folded[base];
            outputs.push_back(ggml_cpy(ctx, sum, dst));  // requantized (or kept F32 for stochastic rounding)
        }
        return outputs;
    });
    // Every folded weight's final bytes: re-rounded on the host (stochastic), or read back from the staging
    // tensor (a repacked layout, written through its buffer's set_tensor) or for the caller (keep).
    for (const ggml_tensor * base : bases) {
        const bool repacked = staged.count(base) > 0;
        if (!stochastic && !repacked && !keep) continue;
        std::vector<uint8_t> bytes(ggml_nbytes(folded[base]));
        if (stochastic) {
            // ggml's reference quantizer (as llama-quantize and export-lora) sets each block's scales; then every
            // quant is re-rounded up or down on that grid, unbiased.
            std::vector<float> values(size_t(ggml_nelements(base)));
            ggml_backend_tensor_get(sums[base], values.data(), 0, values.size() * sizeof(float));
            ggml_quantize_chunk(base->type, values.data(), bytes.data(), 0, base->ne[1], base->ne[0], nullptr);
            round_stochastically(base->type, values.data(), bytes.data(), int64_t(values.size()),
                                 rounding_seed(ggml_get_name(base)));
        } else {
            ggml_backend_tensor_get(repacked ? staged[base] : folded[base], bytes.data(), 0, bytes.size());
        }
        if (stochastic || repacked) ggml_backend_tensor_set(folded[base], bytes.data(), 0, bytes.size());
        if (keep) keep->push_back({ggml_get_name(base), ggml_type_name(target(base)), std::move(bytes)});
    }
    // The pairs are no longer read: the linear maps of the adapted weights use the folded copies.
    for (auto & [base, term] : terms_) term = LowRankTerm{nullptr, 0, nullptr, folded[base], nullptr, false};
    storage_ = TensorBuffer();
}

}  // namespace logo::core
