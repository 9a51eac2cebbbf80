"""Mixtures on quantized bases (Q4_1, Q4_K, Q8_0; k = 1, 8, 20) against the base, side by side with llama.cpp
(same as `logo-cpp bench quant`)."""
from logo_cpp.bench.quant import main

if __name__ == "__main__":
    main()
