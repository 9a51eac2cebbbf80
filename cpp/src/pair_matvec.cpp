#include "pair_matvec.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(LOGO_HAVE_GGML_CPU) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LOGO_PAIR_MATVEC 1
#include <immintrin.h>

#include "ggml-cpu.h"
#endif

namespace logo::core {

#if LOGO_PAIR_MATVEC

namespace {

// ggml's Q8_0 block: an F16 scale and 32 int8 values (ggml-common.h's block_q8_0, 34 bytes).
struct BlockQ8 {
    uint16_t d;
    int8_t qs[32];
};
static_assert(sizeof(BlockQ8) == 34, "Q8_0 block layout");

constexpr int kRows = 4;  // rows whose dot products run interleaved: four independent FMA chains

#define LOGO_X86_KERNEL __attribute__((target("avx2,fma,f16c")))
#define LOGO_X86_VNNI_KERNEL __attribute__((target("avx2,fma,f16c,avxvnni")))

// ggml's hsum_float_8 (arch/x86/quants.c): the same additions in the same order.
LOGO_X86_KERNEL inline float sum_lanes(__m256 x) {
    __m128 r = _mm256_extractf128_ps(x, 1);
    r = _mm_add_ps(r, _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// The integer part of one block's dot product, as eight int32 lanes of four products each. Values of Q8_0 lie
// in [-127, 127], so the 16-bit pair sums of maddubs cannot saturate and both forms give the same integers
// as ggml's mul_sum_i8_pairs_float.
LOGO_X86_KERNEL inline __m256i block_dot(__m256i qx, __m256i qy) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
    return _mm256_madd_epi16(_mm256_set1_epi16(1), pairs);
}

LOGO_X86_VNNI_KERNEL inline __m256i block_dot_vnni(__m256i qx, __m256i qy) {
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
}

// out[r] = add[r] + row r of w . y for r in [r0, r1): per row ggml_vec_dot_q8_0_q8_0's arithmetic, kRows rows
// interleaved so that their FMA chains overlap.
#define LOGO_DOT_ROWS(NAME, ATTR, DOT)                                                                              \
    ATTR void NAME(int n_blocks, const char * w, size_t row_bytes, int r0, int r1, const BlockQ8 * y, const float * add, \
                   float * out) {                                                                                   \
        int r = r0;                                                                                                 \
        for (; r + kRows <= r1; r += kRows) {                                                                       \
            __m256 acc[kRows];                                                                                      \
            const BlockQ8 * rows[kRows];                                                                            \
            for (int j = 0; j < kRows; ++j) {                                                                       \
                acc[j] = _mm256_setzero_ps();                                                                       \
                rows[j] = reinterpret_cast<const BlockQ8 *>(w + size_t(r + j) * row_bytes);                         \
            }                                                                                                       \
            for (int ib = 0; ib < n_blocks; ++ib) {                                                                 \
                const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y[ib].qs));                 \
                const float dy = _cvtsh_ss(y[ib].d);                                                                \
                for (int j = 0; j < kRows; ++j) {                                                                   \
                    const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(rows[j][ib].qs));       \
                    const __m256 d = _mm256_set1_ps(_cvtsh_ss(rows[j][ib].d) * dy);                                 \
                    acc[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(DOT(qx, qy)), acc[j]);                          \
                }                                                                                                   \
            }                                                                                                       \
            for (int j = 0; j < kRows; ++j) out[r + j] = add ? add[r + j] + sum_lanes(acc[j]) : sum_lanes(acc[j]); \
        }                                                                                                           \
        for (; r < r1; ++r) {                                                                                       \
            const BlockQ8 * row = reinterpret_cast<const BlockQ8 *>(w + size_t(r) * row_bytes);                     \
            __m256 acc = _mm256_setzero_ps();                                                                       \
            for (int ib = 0; ib < n_blocks; ++ib) {                                                                 \
                const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y[ib].qs));                 \
                const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(row[ib].qs));               \
                const __m256 d = _mm256_set1_ps(_cvtsh_ss(row[ib].d) * _cvtsh_ss(y[ib].d));                         \
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(DOT(qx, qy)), acc);                                    \
            }                                                                                                       \
            out[r] = add ? add[r] + sum_lanes(acc) : sum_lanes(acc);                                                \
        }                                                                                                           \
    }

LOGO_DOT_ROWS(dot_rows, LOGO_X86_KERNEL, block_dot)
LOGO_DOT_ROWS(dot_rows_vnni, LOGO_X86_VNNI_KERNEL, block_dot_vnni)
#undef LOGO_DOT_ROWS

using DotRows = void (*)(int, const char *, size_t, int, int, const BlockQ8 *, const float *, float *);

// The kernel this CPU runs, or null where it lacks AVX2/FMA/F16C. (VNNI computes the same integers in one
// instruction instead of two.)
DotRows pick_kernel() {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
    // F16C has no __builtin_cpu_supports name in older compilers; every AVX2 CPU has it (Haswell and later, Zen).
    if (__builtin_cpu_supports("avxvnni")) return dot_rows_vnni;
    return dot_rows;
}

DotRows kernel() {
    static const DotRows picked = pick_kernel();
    return picked;
}

// The node's work on thread ith of nth: quantize x as ggml's matmul does (its Q8_0 from_float), then a fixed
// share of whole row groups. src[0] = w, src[1] = x, src[2] = add or null.
void compute(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    const ggml_tensor * add = dst->src[2];
    const int64_t n_in = w->ne[0], n_out = w->ne[1];
    const int n_blocks = int(n_in / 32);
    thread_local std::vector<BlockQ8> y;
    if (y.size() < size_t(n_blocks)) y.resize(size_t(n_blocks));
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float(static_cast<const float *>(x->data), y.data(), n_in);
    const int64_t groups = (n_out + kRows - 1) / kRows;
    const int64_t r0 = groups * ith / nth * kRows;
    const int64_t r1 = std::min<int64_t>(groups * (ith + 1) / nth * kRows, n_out);
    if (r0 >= r1) return;
    kernel()(n_blocks, static_cast<const char *>(w->data), w->nb[1], int(r0), int(r1), y.data(),
             add ? static_cast<const float *>(add->data) : nullptr, static_cast<float *>(dst->data));
}

}  // namespace

bool pair_matvec_available() {
    // LOGO_PAIR_MATVEC=0 keeps ggml's matmuls (the same numbers), to measure what the kernels save; read at
    // every graph build (one getenv a step) so that one process can compare both.
    const char * off = std::getenv("LOGO_PAIR_MATVEC");
    return !(off && std::string(off) == "0") && kernel() != nullptr;
}

#else

bool pair_matvec_available() { return false; }

#endif

bool pair_matvec_fits(const ggml_tensor * w, const ggml_tensor * x) {
    return w->type == GGML_TYPE_Q8_0 && w->ne[2] == 1 && w->ne[3] == 1 && w->nb[0] == ggml_type_size(GGML_TYPE_Q8_0) &&
           x->type == GGML_TYPE_F32 && ggml_nelements(x) == w->ne[0] && ggml_is_contiguous(x) && w->ne[0] % 32 == 0;
}

ggml_tensor * pair_matvec(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * add) {
#if LOGO_PAIR_MATVEC
    ggml_tensor * args[3] = {w, x, add};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], 1, 1, 1, args, add ? 3 : 2, compute, GGML_N_TASKS_MAX, nullptr);
#else
    (void)ctx, (void)w, (void)x, (void)add;
    return nullptr;
#endif
}

}  // namespace logo::core
