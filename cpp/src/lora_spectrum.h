// Data-free facts about one LoRA update dW = s B A, computed from the small r x r Gram matrices
// without forming dW: its Frobenius and spectral norms and its top right singular vector (Arrow's
// prototype, Ostapenko et al. 2024, "Towards modular LLMs by building and reusing a library of LoRAs").
#pragma once

#include <cstdint>
#include <vector>

namespace logo::core {

struct LoraSpectrum {
    double frobenius = 0;  // ||s B A||_F
    double spectral = 0;   // ||s B A||_2, the largest singular value
    std::vector<float> top_right;  // [n_in], unit norm: the top right singular vector (sign fixed, see .cpp)
};

// a: row-major [rank][n_in] (PEFT's lora_A), b: row-major [n_out][rank] (lora_B), scale = alpha / rank.
// Deterministic: the same matrices give the same bits, whatever else is in the pool.
LoraSpectrum lora_spectrum(const std::vector<float> & a, const std::vector<float> & b, int64_t rank, int64_t n_in,
                           int64_t n_out, float scale);

// R A, row-major [rank][n_in], with s B = Q R (Householder QR of the n_out x rank matrix s B in double; Q has
// orthonormal columns): ||s B A h|| = ||R A h|| for every h, so the norm signal needs one rank x n_in matrix
// per adapter instead of A and B (a cheaper probe: no n_out-wide output, no second matmul). Rows of R beyond
// n_out (rank > n_out) are zero. Deterministic, like lora_spectrum.
std::vector<float> lora_norm_factor(const std::vector<float> & a, const std::vector<float> & b, int64_t rank,
                                    int64_t n_in, int64_t n_out, float scale);

}  // namespace logo::core
