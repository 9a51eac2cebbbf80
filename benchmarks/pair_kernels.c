// What a decode step pays for a mixture's low-rank pair, kernel by kernel: nanoseconds per weight element of
// ggml's CPU matmul against one token (y = W x, x [n_in, 1] F32) for each type a pair can be stored in, at the
// shapes of SmolLM2-135M's attn_q/attn_v with k = 1 and k = 20 rank-8 adapters, beside the base's own Q4_1; and
// the cost of one graph node (a tiny add: mostly the thread barrier after it). Each measurement streams
// `copies` distinct matrices (as a model's 30 layers do) and keeps the best of `reps` runs.
// Results and their reading: docs/mixtures-on-quantized-bases.md.
//
// Build against llama-cpp-python's ggml (the one logo-cpp uses) and run:
//   S=$(python -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
//   cc -O2 benchmarks/pair_kernels.c -I$S/include -L$S/llama_cpp/lib -lggml -lggml-base -lggml-cpu
//      -Wl,-rpath,$S/llama_cpp/lib -o /tmp/pair_kernels && /tmp/pair_kernels [threads] [reps]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-cpu.h"
#include "ggml.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// Uniform values in [-1, 1], stored in the tensor's type.
static void fill(struct ggml_tensor * t) {
    const int64_t n = ggml_nelements(t);
    float * v = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; ++i) v[i] = (float)(rand() % 2001 - 1000) / 1000.0f;
    ggml_quantize_chunk(t->type, v, t->data, 0, n / t->ne[0], t->ne[0], NULL);
    free(v);
}

static double best_compute(struct ggml_context * ctx, struct ggml_cgraph * graph, int threads, int reps) {
    ggml_graph_compute_with_ctx(ctx, graph, threads);  // warm up
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        ggml_graph_compute_with_ctx(ctx, graph, threads);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

// ns per weight element of `copies` matmuls [n_in, rows] x [n_in, 1].
static double matmul_ns(enum ggml_type type, int n_in, int rows, int copies, int threads, int reps) {
    const size_t bytes = (size_t)copies * (ggml_row_size(type, n_in) * (size_t)rows + 4 * (size_t)rows + 4096) + (64u << 20);
    struct ggml_init_params params = {bytes, NULL, false};
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, 1);
    fill(x);
    struct ggml_cgraph * graph = ggml_new_graph_custom(ctx, 2 * (size_t)copies + 16, false);
    for (int i = 0; i < copies; ++i) {
        struct ggml_tensor * w = ggml_new_tensor_2d(ctx, type, n_in, rows);
        fill(w);
        ggml_build_forward_expand(graph, ggml_mul_mat(ctx, w, x));
    }
    const double seconds = best_compute(ctx, graph, threads, reps);
    ggml_free(ctx);
    return seconds * 1e9 / ((double)n_in * rows * copies);
}

// ns per node of a chain of n tiny adds.
static double node_ns(int n, int threads, int reps) {
    struct ggml_init_params params = {(size_t)n * 1024 + (16u << 20), NULL, false};
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * x = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 64);
    fill(x);
    struct ggml_cgraph * graph = ggml_new_graph_custom(ctx, (size_t)n + 16, false);
    struct ggml_tensor * y = x;
    for (int i = 0; i < n; ++i) y = ggml_add(ctx, y, x);
    ggml_build_forward_expand(graph, y);
    const double seconds = best_compute(ctx, graph, threads, reps);
    ggml_free(ctx);
    return seconds * 1e9 / n;
}

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    const int reps = argc > 2 ? atoi(argv[2]) : 20;
    const int copies = 30;  // SmolLM2's layers
    ggml_cpu_init();
    srand(1);
    struct { const char * what; int n_in, rows; } shapes[] = {
        {"base attn_q W (Q4_1 in the model)", 576, 576},
        {"k=20: A of q+v shared [576 x 320]", 576, 320},
        {"k=20: B of q [160 x 576]", 160, 576},
        {"k=20: B of v [160 x 192]", 160, 192},
        {"k=1: A of q+v [576 x 16]", 576, 16},
        {"k=1: A of q+v padded [576 x 64]", 576, 64},
        {"k=1: B of q [8 x 576]", 8, 576},
        {"k=1: B of q padded [32 x 576]", 32, 576},
    };
    const enum ggml_type types[] = {GGML_TYPE_Q4_1, GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0};
    printf("ns per weight element, one token, %d thread(s), best of %d, %d copies\n", threads, reps, copies);
    printf("%-38s", "shape");
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); ++t) printf(" %7s", ggml_type_name(types[t]));
    printf("\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); ++s) {
        printf("%-38s", shapes[s].what);
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); ++t) {
            if (shapes[s].n_in % ggml_blck_size(types[t]) != 0) {
                printf(" %7s", "-");
                continue;
            }
            printf(" %7.4f", matmul_ns(types[t], shapes[s].n_in, shapes[s].rows, copies, threads, reps));
            fflush(stdout);
        }
        printf("\n");
    }
    printf("one graph node (a tiny add and the barrier after it): %.0f ns\n", node_ns(2000, threads, reps));
    return 0;
}
