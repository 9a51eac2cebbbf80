#include "lora_spectrum.h"

#include <algorithm>
#include <cmath>

namespace logo::core {

namespace {

using Square = std::vector<double>;  // r x r, row-major

// G[i][j] = sum_k x[i][k] x[j][k] over rows of a row-major [rows][cols] matrix (rows = rank).
Square gram_rows(const std::vector<float> & x, int64_t rows, int64_t cols) {
    Square g(size_t(rows * rows), 0.0);
    for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = i; j < rows; ++j) {
            double s = 0;
            for (int64_t k = 0; k < cols; ++k) s += double(x[size_t(i * cols + k)]) * double(x[size_t(j * cols + k)]);
            g[size_t(i * rows + j)] = g[size_t(j * rows + i)] = s;
        }
    }
    return g;
}

// G[i][j] = sum_k x[k][i] x[k][j] over columns of a row-major [rows][cols] matrix (cols = rank).
Square gram_cols(const std::vector<float> & x, int64_t rows, int64_t cols) {
    Square g(size_t(cols * cols), 0.0);
    for (int64_t k = 0; k < rows; ++k) {
        const float * row = x.data() + k * cols;
        for (int64_t i = 0; i < cols; ++i) {
            for (int64_t j = 0; j < cols; ++j) g[size_t(i * cols + j)] += double(row[i]) * double(row[j]);
        }
    }
    return g;
}

}  // namespace

LoraSpectrum lora_spectrum(const std::vector<float> & a, const std::vector<float> & b, int64_t r, int64_t n_in,
                           int64_t n_out, float scale) {
    // (BA)^T (BA) = A^T Gb A with Gb = B^T B. Its eigenvectors with nonzero eigenvalue are A^T y for the
    // eigenvectors y of the r x r matrix M = Gb Ga (Ga = A A^T), with the same eigenvalues: so the top right
    // singular vector of BA is A^T y for M's dominant eigenvector, and ||BA||_F^2 = trace(M).
    const Square ga = gram_rows(a, r, n_in);
    const Square gb = gram_cols(b, n_out, r);
    Square m(size_t(r * r), 0.0);
    for (int64_t i = 0; i < r; ++i) {
        for (int64_t k = 0; k < r; ++k) {
            for (int64_t j = 0; j < r; ++j) m[size_t(i * r + j)] += gb[size_t(i * r + k)] * ga[size_t(k * r + j)];
        }
    }
    LoraSpectrum out;
    double trace = 0;
    for (int64_t i = 0; i < r; ++i) trace += m[size_t(i * r + i)];
    out.frobenius = std::fabs(double(scale)) * std::sqrt(std::max(trace, 0.0));

    // Power iteration from a fixed start (every component nonzero, so no eigenvector is orthogonal to it
    // except by measure-zero accident). M is similar to a symmetric PSD matrix, so it converges to the top
    // eigenvector at rate lambda_2 / lambda_1; a near-tie makes the vector (not the norm) ill-defined anyway.
    std::vector<double> y(static_cast<size_t>(r)), next(static_cast<size_t>(r));
    for (int64_t i = 0; i < r; ++i) y[size_t(i)] = 1.0 + 0.1 * double(i);
    for (int iter = 0; iter < 5000; ++iter) {
        double norm = 0;
        for (int64_t i = 0; i < r; ++i) {
            double s = 0;
            for (int64_t j = 0; j < r; ++j) s += m[size_t(i * r + j)] * y[size_t(j)];
            next[size_t(i)] = s;
            norm += s * s;
        }
        norm = std::sqrt(norm);
        if (norm == 0) break;  // B A = 0: no direction at all
        double change = 0;
        for (int64_t i = 0; i < r; ++i) {
            next[size_t(i)] /= norm;
            change += std::fabs(next[size_t(i)] - y[size_t(i)]);
        }
        y.swap(next);
        if (change < 1e-14) break;
    }
    // v = A^T y, normalised; its sign is fixed so that the largest component is positive (Arrow's score
    // |<v, h>| ignores the sign; fixing it keeps the vector itself reproducible).
    std::vector<double> v(static_cast<size_t>(n_in), 0.0);
    for (int64_t k = 0; k < r; ++k) {
        for (int64_t c = 0; c < n_in; ++c) v[size_t(c)] += y[size_t(k)] * double(a[size_t(k * n_in + c)]);
    }
    double vnorm = 0, largest = 0;
    for (double x : v) {
        vnorm += x * x;
        if (std::fabs(x) > std::fabs(largest)) largest = x;
    }
    vnorm = std::sqrt(vnorm);
    out.top_right.assign(size_t(n_in), 0.0f);
    if (vnorm == 0) return out;
    const double sign = largest < 0 ? -1.0 : 1.0;
    for (int64_t c = 0; c < n_in; ++c) out.top_right[size_t(c)] = float(sign * v[size_t(c)] / vnorm);
    // The spectral norm is ||s B A v|| for the unit top right singular vector v.
    std::vector<double> av(static_cast<size_t>(r), 0.0);
    for (int64_t k = 0; k < r; ++k) {
        for (int64_t c = 0; c < n_in; ++c) av[size_t(k)] += double(a[size_t(k * n_in + c)]) * v[size_t(c)] / vnorm;
    }
    double bav = 0;
    for (int64_t i = 0; i < r; ++i) {
        for (int64_t j = 0; j < r; ++j) bav += av[size_t(i)] * gb[size_t(i * r + j)] * av[size_t(j)];
    }
    out.spectral = std::fabs(double(scale)) * std::sqrt(std::max(bav, 0.0));
    return out;
}

std::vector<float> lora_norm_factor(const std::vector<float> & a, const std::vector<float> & b, int64_t r, int64_t n_in,
                                    int64_t n_out, float scale) {
    // Householder QR of X = s B (column-major copy, n_out x r): after the loop, X's upper triangle is R.
    const int64_t m = n_out;
    std::vector<double> x(size_t(m * r));  // x[col * m + row]
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < r; ++j) x[size_t(j * m + i)] = double(scale) * double(b[size_t(i * r + j)]);
    }
    std::vector<double> v(static_cast<size_t>(m));
    for (int64_t k = 0; k < std::min(m, r); ++k) {
        double * col = x.data() + k * m;
        double norm = 0;
        for (int64_t i = k; i < m; ++i) norm += col[i] * col[i];
        norm = std::sqrt(norm);
        if (norm == 0) continue;  // a zero column below the diagonal: nothing to reflect
        const double alpha = col[k] > 0 ? -norm : norm;
        double vnorm = 0;
        for (int64_t i = k; i < m; ++i) {
            v[size_t(i)] = col[i] - (i == k ? alpha : 0.0);
            vnorm += v[size_t(i)] * v[size_t(i)];
        }
        if (vnorm == 0) continue;
        for (int64_t j = k; j < r; ++j) {  // X <- (I - 2 v v^T / v^T v) X on rows k.., columns k..
            double * cj = x.data() + j * m;
            double dot = 0;
            for (int64_t i = k; i < m; ++i) dot += v[size_t(i)] * cj[i];
            const double f = 2.0 * dot / vnorm;
            for (int64_t i = k; i < m; ++i) cj[i] -= f * v[size_t(i)];
        }
    }
    // (R A)[k] = sum_{l >= k} R[k][l] A[l], R[k][l] = x[l * m + k] for k <= l (k < n_out).
    std::vector<double> ra(size_t(r * n_in), 0.0);
    for (int64_t k = 0; k < std::min(m, r); ++k) {
        for (int64_t l = k; l < r; ++l) {
            const double rkl = x[size_t(l * m + k)];
            if (rkl == 0) continue;
            const float * row = a.data() + l * n_in;
            for (int64_t c = 0; c < n_in; ++c) ra[size_t(k * n_in + c)] += rkl * double(row[c]);
        }
    }
    return std::vector<float>(ra.begin(), ra.end());
}

}  // namespace logo::core
