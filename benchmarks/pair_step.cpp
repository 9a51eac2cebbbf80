// What a k-adapter mixture adds to the weight products of one SmolLM2-135M decode step, from ggml graphs that
// hold exactly those products: the base's seven linear maps in each of 30 blocks plus the tied output head, with
// and without a mixture's Q8_0 pair on attn_q/attn_v (k rank-8 adapters: rank 8k per map, padded to 32), the pair
// either as ggml nodes (A x once, then per map a view, B matmul and add: 5 computing nodes a block) or as the
// single-node kernels of cpp/src/pair_matvec.cpp (3 nodes a block). Attention, norms and the rest of a real step
// are left out, so the ratios here are the lower bound of a real step's (whose extra work is the same with and
// without a mixture). The pair's nodes are also timed alone (30 blocks' worth, per block). Each graph is timed
// best of `reps` runs, the variants interleaved.
// Results and their reading: docs/mixtures-on-quantized-bases.md.
//
// Build against llama-cpp-python's ggml (the one logo-cpp uses), with the library's kernel source, and run:
//   S=$(python -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
//   c++ -O2 -std=c++17 -DLOGO_HAVE_GGML_CPU benchmarks/pair_step.cpp cpp/src/pair_matvec.cpp -Icpp/src
//      -I$S/include -L$S/llama_cpp/lib -lggml -lggml-base -lggml-cpu -Wl,-rpath,$S/llama_cpp/lib -o /tmp/pair_step
//   /tmp/pair_step [threads] [reps] [base type: q4_1 | q5_0 | q8_0]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "pair_matvec.h"

namespace {

constexpr int kBlocks = 30, kEmbd = 576, kKv = 192, kFfn = 1536, kVocab = 49152;

std::mt19937 rng(1);

ggml_tensor * filled(ggml_context * ctx, ggml_type type, int64_t n_in, int64_t rows) {
    ggml_tensor * t = ggml_new_tensor_2d(ctx, type, n_in, rows);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(size_t(n_in * rows));
    for (float & x : v) x = u(rng);
    ggml_quantize_chunk(type, v.data(), t->data, 0, rows, n_in, nullptr);
    return t;
}

struct Step {
    std::vector<ggml_tensor *> x_in, x_ffn, x_down;  // per block: the inputs of the maps (values do not matter)
    ggml_cgraph * graph = nullptr;
    int nodes = 0;
};

double seconds(ggml_context * ctx, ggml_cgraph * graph, int threads) {
    const auto t0 = std::chrono::steady_clock::now();
    ggml_graph_compute_with_ctx(ctx, graph, threads);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
    const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
    const std::string base_name = argc > 3 ? argv[3] : "q4_1";
    const ggml_type base = base_name == "q8_0" ? GGML_TYPE_Q8_0 : base_name == "q5_0" ? GGML_TYPE_Q5_0 : GGML_TYPE_Q4_1;
    ggml_cpu_init();
    if (!logo::core::pair_matvec_available()) {
        std::printf("the pair_matvec kernels do not run on this CPU\n");
        return 1;
    }
    const std::vector<int> ks = {2, 8, 20};  // (k = 1 of a rank-8 pool is a tiny pair in its own types: not this path)
    ggml_init_params params = {size_t(1) << 30, nullptr, false};
    ggml_context * ctx = ggml_init(params);

    // The base's weights and one input per map reading them.
    struct Block {
        ggml_tensor *q, *k, *v, *o, *gate, *up, *down, *x, *x_ffn, *x_down;
    };
    std::vector<Block> blocks(kBlocks);
    for (Block & b : blocks) {
        b.q = filled(ctx, base, kEmbd, kEmbd);
        b.k = filled(ctx, base, kEmbd, kKv);
        b.v = filled(ctx, base, kEmbd, kKv);
        b.o = filled(ctx, base, kEmbd, kEmbd);
        b.gate = filled(ctx, base, kEmbd, kFfn);
        b.up = filled(ctx, base, kEmbd, kFfn);
        b.down = filled(ctx, base, kFfn, kEmbd);
        b.x = filled(ctx, GGML_TYPE_F32, kEmbd, 1);
        b.x_ffn = filled(ctx, GGML_TYPE_F32, kEmbd, 1);
        b.x_down = filled(ctx, GGML_TYPE_F32, kFfn, 1);
    }
    ggml_tensor * head = filled(ctx, GGML_TYPE_Q8_0, kEmbd, kVocab);
    ggml_tensor * h = filled(ctx, GGML_TYPE_F32, kEmbd, 1);

    ggml_tensor * yq_given = filled(ctx, GGML_TYPE_F32, kEmbd, 1);
    ggml_tensor * yv_given = filled(ctx, GGML_TYPE_F32, kKv, 1);
    // variant 0: base; per k: 1 = pair as ggml nodes, 2 = pair as pair_matvec nodes. Without the base, the
    // graph holds the pair's nodes alone (adding to fixed W x values).
    auto build = [&](int k, int variant, bool with_base = true) {
        ggml_cgraph * g = ggml_new_graph_custom(ctx, 4096, false);
        const int64_t rank = k ? GGML_PAD(8 * k, 32) : 0;
        for (Block & b : blocks) {
            ggml_tensor * yq = with_base ? ggml_mul_mat(ctx, b.q, b.x) : yq_given;
            ggml_tensor * yv = with_base ? ggml_mul_mat(ctx, b.v, b.x) : yv_given;
            if (variant) {
                ggml_tensor * a = filled(ctx, GGML_TYPE_Q8_0, kEmbd, 2 * rank);
                ggml_tensor * bq = filled(ctx, GGML_TYPE_Q8_0, rank, kEmbd);
                ggml_tensor * bv = filled(ctx, GGML_TYPE_Q8_0, rank, kKv);
                if (variant == 1) {
                    ggml_tensor * ax = ggml_mul_mat(ctx, a, b.x);
                    yq = ggml_add(ctx, yq, ggml_mul_mat(ctx, bq, ggml_view_1d(ctx, ax, rank, 0)));
                    yv = ggml_add(ctx, yv, ggml_mul_mat(ctx, bv, ggml_view_1d(ctx, ax, rank, ax->nb[0] * rank)));
                } else {
                    ggml_tensor * ax = logo::core::pair_matvec(ctx, a, b.x, nullptr);
                    yq = logo::core::pair_matvec(ctx, bq, ggml_view_1d(ctx, ax, rank, 0), yq);
                    yv = logo::core::pair_matvec(ctx, bv, ggml_view_1d(ctx, ax, rank, ax->nb[0] * rank), yv);
                }
            }
            ggml_build_forward_expand(g, yq);
            ggml_build_forward_expand(g, yv);
            if (!with_base) continue;
            for (ggml_tensor * t : {ggml_mul_mat(ctx, b.k, b.x), ggml_mul_mat(ctx, b.o, b.x), ggml_mul_mat(ctx, b.gate, b.x_ffn),
                                    ggml_mul_mat(ctx, b.up, b.x_ffn), ggml_mul_mat(ctx, b.down, b.x_down)}) {
                ggml_build_forward_expand(g, t);
            }
        }
        if (with_base) ggml_build_forward_expand(g, ggml_mul_mat(ctx, head, h));
        return g;
    };
    // [0] base; per k: [1 + 4i] step with ggml nodes, [2 + 4i] step with kernels, [3 + 4i], [4 + 4i] the pair alone.
    std::vector<ggml_cgraph *> graphs = {build(0, 0)};
    for (int k : ks) {
        graphs.push_back(build(k, 1));
        graphs.push_back(build(k, 2));
        graphs.push_back(build(k, 1, false));
        graphs.push_back(build(k, 2, false));
    }
    std::vector<double> best(graphs.size(), 1e30);
    for (size_t g = 0; g < graphs.size(); ++g) seconds(ctx, graphs[g], threads);  // warm up
    for (int r = 0; r < reps; ++r) {
        for (size_t g = 0; g < graphs.size(); ++g) best[g] = std::min(best[g], seconds(ctx, graphs[g], threads));
    }
    std::printf("SmolLM2-135M decode step, weight products only, base %s, %d thread(s), best of %d\n", base_name.c_str(),
                threads, reps);
    std::printf("base: %.3f ms, %d nodes\n", best[0] * 1e3, ggml_graph_n_nodes(graphs[0]));
    for (size_t i = 0; i < ks.size(); ++i) {
        const double ggml_s = best[1 + 4 * i], fused_s = best[2 + 4 * i];
        std::printf("k=%2d (rank %3d per map): the pair alone, per block: ggml nodes %.2f us, pair_matvec %.2f us; "
                    "the step: base %.3fx with the pair as ggml nodes (%d nodes), %.3fx as pair_matvec nodes (%d nodes)\n",
                    ks[i], int(GGML_PAD(8 * ks[i], 32)), best[3 + 4 * i] * 1e6 / kBlocks, best[4 + 4 * i] * 1e6 / kBlocks,
                    best[0] / ggml_s, ggml_graph_n_nodes(graphs[1 + 4 * i]), best[0] / fused_s,
                    ggml_graph_n_nodes(graphs[2 + 4 * i]));
    }
    ggml_free(ctx);
    return 0;
}
