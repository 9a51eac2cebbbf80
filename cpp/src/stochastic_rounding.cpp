#include "stochastic_rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace logo::core {

namespace {

// splitmix64's finaliser: a counter-based generator, so any element's number is computed on its own.
uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

float uniform(uint64_t seed, int64_t i) { return float(mix(seed ^ mix(uint64_t(i))) >> 40) * (1.0f / 16777216.0f); }

float half(const uint8_t * p) {
    ggml_fp16_t h;
    std::memcpy(&h, p, sizeof(h));
    return ggml_fp16_to_fp32(h);
}

// One block format: value = (q - offset) * d + m, q in [0, levels); `with_min`: m stored after d.
struct Format {
    int bytes;
    int levels;
    int offset;
    bool with_min;
    bool five_bits;  // a 5th bit per element in a 32-bit qh after the scales
    bool bytes_per_quant;  // Q8_0: one signed byte per element
};

bool format_of(ggml_type type, Format & f) {
    switch (type) {
        case GGML_TYPE_Q4_0: f = {18, 16, 8, false, false, false}; return true;
        case GGML_TYPE_Q4_1: f = {20, 16, 0, true, false, false}; return true;
        case GGML_TYPE_Q5_0: f = {22, 32, 16, false, true, false}; return true;
        case GGML_TYPE_Q5_1: f = {24, 32, 0, true, true, false}; return true;
        case GGML_TYPE_Q8_0: f = {34, 255, 127, false, false, true}; return true;  // q - 127 in [-127, 127]
        default: return false;
    }
}

}  // namespace

bool rounds_stochastically(ggml_type type) {
    Format f;
    return format_of(type, f);
}

uint64_t rounding_seed(const std::string & name) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    return h;
}

void round_stochastically(ggml_type type, const float * exact, uint8_t * blocks, int64_t n_elements, uint64_t seed) {
    Format f;
    if (!format_of(type, f)) return;
    constexpr int kBlock = 32;
    for (int64_t b = 0; b < n_elements / kBlock; ++b) {
        uint8_t * block = blocks + b * f.bytes;
        const float d = half(block);
        const float m = f.with_min ? half(block + 2) : 0.0f;
        if (d == 0.0f) continue;  // a constant block: nearest rounding is exact
        uint8_t * qs = block + (f.with_min ? 4 : 2);
        uint32_t qh = 0;
        if (f.five_bits) qs += 4;
        for (int j = 0; j < kBlock; ++j) {
            const int64_t i = b * kBlock + j;
            const float u = (exact[i] - m) / d + float(f.offset);
            const int q = std::clamp(int(std::floor(u + uniform(seed, i))), 0, f.levels - 1);
            if (f.bytes_per_quant) {
                qs[j] = uint8_t(int8_t(q - f.offset));
                continue;
            }
            // Elements j and j + 16 share byte j % 16: low and high nibble; the 5th bit sits at bit j of qh.
            uint8_t & byte = qs[j % 16];
            byte = j < 16 ? uint8_t((byte & 0xF0) | (q & 0x0F)) : uint8_t((byte & 0x0F) | ((q & 0x0F) << 4));
            qh |= uint32_t((q >> 4) & 1) << j;
        }
        if (f.five_bits) std::memcpy(block + (f.with_min ? 4 : 2), &qh, sizeof(qh));
    }
}

}  // namespace logo::core
