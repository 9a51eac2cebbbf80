"""logo-cpp serve vs llama-cpp-python's own server, side by side (same as `logo-cpp bench serve`)."""
from logo_cpp.bench.serve import main

if __name__ == "__main__":
    main()
