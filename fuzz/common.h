// Shared by the libFuzzer targets: quiet logs, the input as a file, and the exceptions that count as a
// clean refusal. Anything else (a crash, an abort, a sanitizer report, a timeout) is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ggml.h"
#include "llama.h"
#include "logo/logo.h"

namespace fuzz {

inline void quiet_logs() {
    auto drop = [](ggml_log_level, const char *, void *) {};
    ggml_log_set(drop, nullptr);
    llama_log_set(drop, nullptr);
}

// The loaders read files, so each input is written to one per-process file (on tmpfs where there is one).
inline const std::string & input_path() {
    static const std::string path = [] {
        const char * dir = std::getenv("LOGO_FUZZ_TMP");
        std::string d = dir ? dir : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        return d + "/logo-fuzz-" + std::to_string(getpid()) + ".gguf";
    }();
    return path;
}

inline const std::string & write_input(const uint8_t * data, size_t size) {
    const std::string & path = input_path();
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (size && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
    return path;
}

// A required environment variable (the targets' fixed files: base models, vocabularies).
inline std::string env(const char * name) {
    const char * v = std::getenv(name);
    if (!v || !*v) {
        std::fprintf(stderr, "set %s (see tools/fuzz.sh)\n", name);
        std::exit(2);
    }
    return v;
}

inline std::vector<std::string> split(const std::string & s, char sep) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t end = s.find(sep, start);
        out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return out;
}

inline logo::ModelParams cpu_params() {
    logo::ModelParams p;
    p.device = "cpu";
    p.n_threads = 1;
    return p;
}

}  // namespace fuzz
