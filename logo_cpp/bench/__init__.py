"""Speed benchmarks, logo-cpp and llama.cpp side by side in one run on the same GGUF files
(`logo-cpp bench`; the scripts in benchmarks/ call these)."""
