#include "graph.h"

#include <cmath>
#include <vector>

#include "backend.h"
#include "pair_matvec.h"

namespace logo::core {

// Every linear map of the model passes through here, so adapters enter the graph in one place.
// Per-sequence adapter terms cover every stream of the session; a batch uses the slice of its streams.
struct Adapters {
    const LowRankTerms * terms;
    int first_stream;
    int n_stream;
    // A x already in this graph, per (A, x): the weights reading one input share one product.
    struct Product {
        const ggml_tensor * a;
        const ggml_tensor * x;
        ggml_tensor * ax;
    };
    std::vector<Product> products;
    // One token on the CPU: plain Q8_0 pairs go through the single-node kernels of pair_matvec.h.
    bool matvec = false;
};

// Whether this weight's A x (and, when its B is Q8_0 too, B (A x) + W x) runs as pair_matvec() nodes: one
// mixture for every sequence (no slot weights, no per-sequence stacks) and one token.
static bool matvec_input(const LowRankTerm & term, const ggml_tensor * x, const Adapters & adapters) {
    return adapters.matvec && !term.slot_weights && pair_matvec_fits(term.a, x);
}

// A x for the adapted weights that read x: [rows of A, n_rows / n_mix, n_mix], each sequence's slot
// weights applied when one pair serves several mixtures. Every graph node costs a thread barrier and
// scheduling work, so the product is built once per input.
static ggml_tensor * low_rank_input(ggml_context * ctx, const LowRankTerm & term, ggml_tensor * x, Adapters & adapters) {
    for (const Adapters::Product & p : adapters.products) {
        if (p.a == term.a && p.x == x) return p.ax;
    }
    ggml_tensor * a = term.a;
    const int64_t R = a->ne[1];
    ggml_tensor * ax;
    if (term.slot_weights) {
        // One shared pair; each sequence scales the rank slots by its own adapter weights.
        ggml_tensor * sw = term.slot_weights;
        sw = ggml_view_3d(ctx, sw, R, 1, adapters.n_stream, sw->nb[1], sw->nb[2], sw->nb[2] * size_t(adapters.first_stream));
        if (term.per_stream) {
            // Each stream multiplied on its own (the pair broadcast over streams), see LowRankTerm::per_stream.
            ggml_tensor * xs = ggml_reshape_3d(ctx, x, x->ne[0], x->ne[1] / adapters.n_stream, adapters.n_stream);
            ax = ggml_mul_mat(ctx, a, xs);                                                        // [R, rows/stream, n_stream]
        } else {
            ax = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, a, a->ne[0], R), x);                      // [R, rows]
            ax = ggml_reshape_3d(ctx, ax, R, x->ne[1] / adapters.n_stream, adapters.n_stream);
        }
        ax = ggml_mul(ctx, ax, sw);
    } else if (a->ne[2] > 1) {
        a = ggml_view_3d(ctx, a, a->ne[0], R, adapters.n_stream, a->nb[1], a->nb[2], a->nb[2] * size_t(adapters.first_stream));
        ggml_tensor * xs = ggml_reshape_3d(ctx, x, x->ne[0], x->ne[1] / adapters.n_stream, adapters.n_stream);
        ax = ggml_mul_mat(ctx, a, xs);                                                            // [R, rows/mix, n_mix]
    } else if (matvec_input(term, x, adapters)) {
        ax = pair_matvec(ctx, a, x, nullptr);                                                     // [R, 1]
    } else {
        ax = ggml_mul_mat(ctx, a, x);                                                             // [R, rows]
    }
    adapters.products.push_back({term.a, x, ax});
    return ax;
}

static ggml_tensor * linear(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, Adapters & adapters) {
    graph_reserve(ctx, kLinearRoom);
    auto it = adapters.terms ? adapters.terms->find(w) : LowRankTerms::const_iterator();
    if (!adapters.terms || it == adapters.terms->end()) return ggml_mul_mat(ctx, w, x);  // [n_out, n_rows]
    const LowRankTerm & term = it->second;
    if (term.folded) return ggml_mul_mat(ctx, term.folded, x);
    ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    ggml_tensor * ax = low_rank_input(ctx, term, x, adapters);
    ggml_tensor * b = term.b;
    const int64_t rank = b->ne[0];
    if (matvec_input(term, x, adapters)) {
        // B (A x) + W x in one node, reading this weight's rows of the product.
        ggml_tensor * rows = ggml_view_1d(ctx, ax, rank, ax->nb[0] * size_t(term.a_row0));
        if (pair_matvec_fits(b, rows)) return pair_matvec(ctx, b, rows, y);
    }
    if (rank != ax->ne[0]) {
        // This weight's rows of the shared product.
        ax = ggml_view_3d(ctx, ax, rank, ax->ne[1], ax->ne[2], ax->nb[1], ax->nb[2], ax->nb[0] * size_t(term.a_row0));
        // Over several tokens those rows are strided. An F32 B multiplies its input as it is, and ggml would
        // take another kernel for strided rows (another summation order) than for the contiguous product of
        // a standalone pair; other types copy the input into their own vec-dot type anyway.
        if (b->type == GGML_TYPE_F32 && !ggml_is_contiguous(ax)) ax = ggml_cont(ctx, ax);
    }
    if (b->ne[2] > 1) {
        b = ggml_view_3d(ctx, b, rank, b->ne[1], adapters.n_stream, b->nb[1], b->nb[2], b->nb[2] * size_t(adapters.first_stream));
    }
    ggml_tensor * bax = ggml_mul_mat(ctx, b, ax);  // [n_out, rows/mix, n_mix]
    if (bax->ne[2] > 1) bax = ggml_reshape_2d(ctx, bax, y->ne[0], y->ne[1]);
    return ggml_add(ctx, y, bax);
}

static ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, float eps) {
    return ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), weight);
}

static ggml_tensor * rope(ggml_context * ctx, ggml_tensor * x, ggml_tensor * positions, const Model & model) {
    const ModelHparams & hp = model.hparams();
    // ext_factor 0 and attn_factor 1: no YaRN; beta values are llama.cpp's defaults (unused without YaRN).
    return ggml_rope_ext(ctx, x, positions, model.weights().rope_freqs, int(hp.n_rot), hp.rope_mode,
                         int(hp.n_ctx_train), hp.rope_freq_base, hp.rope_freq_scale, 0.0f, 1.0f, 32.0f, 1.0f);
}

// Self-attention of one layer over the cache; writes this batch's K and V into the cache first.
static ggml_tensor * attention(ggml_context * ctx, std::vector<ggml_tensor *> & outputs, const Model & model, const KvCache & cache,
                               const BatchShape & shape, const GraphInputs & in, int il, ggml_tensor * x,
                               Adapters & adapters) {
    const ModelHparams & hp = model.hparams();
    const LayerWeights & L = model.weights().layers[size_t(il)];
    const int64_t n_tokens = shape.n_tokens();
    const int64_t hd = hp.head_dim_k;

    ggml_tensor * q = linear(ctx, L.wq, x, adapters);
    ggml_tensor * k = linear(ctx, L.wk, x, adapters);
    ggml_tensor * v = linear(ctx, L.wv, x, adapters);
    if (L.bq) {
        q = ggml_add(ctx, q, L.bq);
        k = ggml_add(ctx, k, L.bk);
        v = ggml_add(ctx, v, L.bv);
    }
    q = ggml_reshape_3d(ctx, q, hd, hp.n_head, n_tokens);
    k = ggml_reshape_3d(ctx, k, hd, hp.n_head_kv, n_tokens);
    if (L.q_norm) {
        // qwen3 normalises each head's query and key before the rotation.
        q = rms_norm(ctx, q, L.q_norm, hp.rms_eps);
        k = rms_norm(ctx, k, L.k_norm, hp.rms_eps);
    }
    q = rope(ctx, q, in.positions, model);
    k = rope(ctx, k, in.positions, model);

    ggml_tensor * k_cache = cache.k[size_t(il)];
    ggml_tensor * v_cache = cache.v[size_t(il)];
    // Roots expanded before anything later: the cache writes precede the attention that reads the cache.
    outputs.push_back(ggml_set_rows(ctx, k_cache, ggml_reshape_2d(ctx, k, hp.n_embd_k_gqa(), n_tokens), in.cache_rows));
    outputs.push_back(ggml_set_rows(ctx, v_cache, ggml_reshape_2d(ctx, v, hp.n_embd_v_gqa(), n_tokens), in.cache_rows));

    // Each stream attends to its own slice of n_kv rows: views [hd, n_head_kv, n_kv, n_stream].
    const size_t k_row = k_cache->nb[1], v_row = v_cache->nb[1];
    ggml_tensor * keys = ggml_view_4d(ctx, k_cache, hd, hp.n_head_kv, shape.n_kv, shape.n_stream,
                                      ggml_row_size(k_cache->type, hd), k_row, k_row * size_t(cache.n_ctx),
                                      k_row * size_t(cache.n_ctx) * size_t(shape.first_stream));
    ggml_tensor * values = ggml_view_4d(ctx, v_cache, hd, hp.n_head_kv, shape.n_kv, shape.n_stream,
                                        ggml_row_size(v_cache->type, hd), v_row, v_row * size_t(cache.n_ctx),
                                        v_row * size_t(cache.n_ctx) * size_t(shape.first_stream));
    keys = ggml_permute(ctx, keys, 0, 2, 1, 3);      // [hd, n_kv, n_head_kv, n_stream]
    values = ggml_permute(ctx, values, 0, 2, 1, 3);  // [hd, n_kv, n_head_kv, n_stream]
    q = ggml_reshape_4d(ctx, q, hd, hp.n_head, shape.n_per_stream, shape.n_stream);
    q = ggml_permute(ctx, q, 0, 2, 1, 3);            // [hd, n_per_stream, n_head, n_stream]

    const float kq_scale = 1.0f / std::sqrt(float(hd));
    ggml_tensor * out = ggml_flash_attn_ext(ctx, q, keys, values, in.mask, kq_scale, 0.0f, 0.0f);
    ggml_prec_set_acc(out, GGML_PREC_F32);
    out = ggml_reshape_2d(ctx, out, hd * hp.n_head, n_tokens);  // [n_embd_q, n_tokens]
    return linear(ctx, L.wo, out, adapters);
}

static ggml_tensor * feed_forward(ggml_context * ctx, const LayerWeights & L, ggml_tensor * x,
                                  Adapters & adapters) {
    ggml_tensor * gate = linear(ctx, L.ffn_gate, x, adapters);
    ggml_tensor * up = linear(ctx, L.ffn_up, x, adapters);
    return linear(ctx, L.ffn_down, ggml_swiglu_split(ctx, gate, up), adapters);
}

size_t forward_tensor_estimate(const ModelHparams & hp) {
    // About 40 tensors a layer without adapters; a guess only, the arena grows when a graph needs more.
    return size_t(256 + hp.n_layer * 64);
}

ForwardGraph build_forward_graph(ggml_context * ctx, const Model & model, const KvCache & cache,
                                 const BatchShape & shape, const LowRankTerms * terms, int stop_layer,
                                 const std::vector<int> & capture) {
    const ModelHparams & hp = model.hparams();
    Adapters adapters = {terms, shape.first_stream, shape.n_stream, {}};
    adapters.matvec = shape.n_tokens() == 1 && is_cpu_device(model.device()) && pair_matvec_available();
    const ModelWeights & w = model.weights();
    ForwardGraph fg;
    graph_reserve(ctx, kLayerRoom);
    GraphInputs & in = fg.inputs;
    const int64_t n_tokens = shape.n_tokens();

    in.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    in.positions = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    in.cache_rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n_tokens);
    in.mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, shape.n_kv, shape.n_per_stream, 1, shape.n_stream);
    for (ggml_tensor * t : {in.tokens, in.positions, in.cache_rows, in.mask}) ggml_set_input(t);
    const bool reduce_outputs = !shape.all_outputs;
    if (reduce_outputs) {
        in.output_rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, shape.n_outputs());
        ggml_set_input(in.output_rows);
    }

    ggml_tensor * residual = ggml_get_rows(ctx, w.tok_embd, in.tokens);  // [n_embd, n_tokens]

    size_t next_capture = 0;
    auto keep_if_captured = [&](int il) {
        if (next_capture < capture.size() && capture[next_capture] == il) {
            fg.captured.push_back(residual);
            ++next_capture;
        }
    };
    for (int il = 0; il < stop_layer; ++il) {
        keep_if_captured(il);
        const LayerWeights & L = w.layers[size_t(il)];
        graph_reserve(ctx, kLayerRoom);
        ggml_tensor * attn = attention(ctx, fg.outputs, model, cache, shape, in, il,
                                       rms_norm(ctx, residual, L.attn_norm, hp.rms_eps), adapters);
        if (il == hp.n_layer - 1 && reduce_outputs) {
            // Only the output rows feed the head: skip the last FFN for every other token.
            attn = ggml_get_rows(ctx, attn, in.output_rows);
            residual = ggml_get_rows(ctx, residual, in.output_rows);
        }
        residual = ggml_add(ctx, residual, attn);
        residual = ggml_add(ctx, residual, feed_forward(ctx, L, rms_norm(ctx, residual, L.ffn_norm, hp.rms_eps), adapters));
    }

    if (stop_layer < hp.n_layer) {
        keep_if_captured(stop_layer);
        fg.block_input = reduce_outputs ? ggml_get_rows(ctx, residual, in.output_rows) : residual;
        ggml_set_output(fg.block_input);
        fg.outputs.push_back(fg.block_input);
        return fg;
    }
    graph_reserve(ctx, kLayerRoom);
    ggml_tensor * h = rms_norm(ctx, residual, w.output_norm, hp.rms_eps);
    fg.logits = linear(ctx, w.output, h, adapters);
    ggml_set_output(fg.logits);
    fg.outputs.push_back(fg.logits);
    return fg;
}

}  // namespace logo::core
