"""Base-model speed, logo-cpp vs llama.cpp (same as `logo-cpp bench core`)."""
from logo_cpp.bench.core import main

if __name__ == "__main__":
    main()
