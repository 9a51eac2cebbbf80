// One decode step's products with a mixture's Q8_0 low-rank pair, each as a single ggml node.
//
// At one token a pair's matmuls are short: A x has a few hundred rows, and each row of a B is as long as the
// rank (5 Q8_0 blocks at rank 160, 1 at rank 32). ggml's CPU matmul pays per node for more than the arithmetic
// there: it quantizes x into a shared buffer and waits for every thread (a barrier inside the node), hands out
// rows in chunks through an atomic counter, calls its dot product once per row (one FMA chain per row, with no
// other row's work to overlap), and the `+ W x` that follows is a node of its own with another barrier. The
// kernels here compute the same numbers in one node: each thread quantizes x itself with ggml's own
// quantizer, takes a fixed share of the rows, runs four rows' dot products interleaved, and adds W x on the
// way out. Measured per adapted SmolLM2 block (attn_q + attn_v), docs/mixtures-on-quantized-bases.md.
//
// Every row is ggml's x86 dot product (ggml_vec_dot_q8_0_q8_0: per 32-block the exact integer sum, eight
// float lanes accumulated by FMA in block order, then its horizontal sum), so the results equal ggml's
// mul_mat + add bit for bit wherever ggml takes its AVX2 path; the tests check that against llama.cpp.
#pragma once

#include "ggml.h"

namespace logo::core {

// Whether the kernels run on this machine: an x86-64 CPU with AVX2, FMA and F16C (checked at run time; the
// library itself is built for baseline x86-64), and ggml's CPU quantizer linked. Elsewhere callers keep
// ggml's matmuls. The environment variable LOGO_PAIR_MATVEC=0 turns the kernels off (read at every graph
// build), so that their effect can be measured in one process.
bool pair_matvec_available();

// One node computing W x (+ add), for one token: w Q8_0 [n_in, n_out] (its rows contiguous: nb[0] the block
// size), x F32 [n_in] contiguous (a view is fine), add F32 [n_out] contiguous or null. Result F32 [n_out, 1].
// Only for tensors the CPU backend computes; call it only when pair_matvec_available().
ggml_tensor * pair_matvec(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * add);

// Whether pair_matvec() accepts these operands (types, shapes, one token, contiguity).
bool pair_matvec_fits(const ggml_tensor * w, const ggml_tensor * x);

}  // namespace logo::core
