// A GGUF file opened for reading metadata, with typed key lookups that fail with
// messages naming the file and the key. Tensor data is not read here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

namespace logo::core {

struct GgufFile {
    std::string path;
    size_t file_size = 0;
    gguf_context * gguf = nullptr;
    ggml_context * meta = nullptr;  // one no_alloc tensor per file tensor: names, types, shapes

    // Opens and checks: exists, is a regular file, non-empty, a GGUF version ggml reads, parses, and every tensor's data
    // lies inside the file. Throws FileError or FormatError.
    explicit GgufFile(const std::string & path);
    ~GgufFile();
    GgufFile(const GgufFile &) = delete;
    GgufFile & operator=(const GgufFile &) = delete;

    bool has_key(const std::string & key) const;
    std::string get_string(const std::string & key) const;  // required
    std::string get_string(const std::string & key, const std::string & fallback) const;
    // Integer keys may be stored as any integer type; floats as f32 or f64.
    int64_t get_int(const std::string & key) const;  // required
    int64_t get_int(const std::string & key, int64_t fallback) const;
    double get_float(const std::string & key, double fallback) const;
    bool has_float(const std::string & key) const;

    // Range-checked reads of values that reach arithmetic: FormatError naming the file and the key, the
    // value found and `expected` (e.g. "an integer in [1, 65536]") when out of [lo, hi] or not finite.
    int64_t get_int_in(const std::string & key, int64_t lo, int64_t hi) const;  // required
    int64_t get_int_in(const std::string & key, int64_t fallback, int64_t lo, int64_t hi) const;
    double get_float_in(const std::string & key, double fallback, double lo, double hi, const std::string & expected) const;

    ggml_tensor * find_tensor(const std::string & name) const;  // nullptr when absent
    size_t tensor_file_offset(const std::string & name) const;  // absolute offset of its data
    std::vector<std::string> tensor_names() const;

private:
    int64_t key_id(const std::string & key) const;
};

// The oldest GGUF version ggml reads; the newest is GGUF_VERSION (gguf.h).
constexpr uint32_t kGgufMinVersion = 2;

// Throws FormatError naming the file, the version found and the versions supported, unless `version`
// (the header's second 32-bit word) is one that ggml's reader accepts.
void check_gguf_version(const std::string & path, uint32_t version);

// "[4096, 32000]": a shape in ggml order, for error messages.
std::string shape_string(const ggml_tensor * t);
std::string shape_string(const std::vector<int64_t> & ne);

}  // namespace logo::core
