"""LoGo speed: probe, mixture decode, heterogeneous batch, end to end (same as `logo-cpp bench logo`)."""
from logo_cpp.bench.logo import main

if __name__ == "__main__":
    main()
