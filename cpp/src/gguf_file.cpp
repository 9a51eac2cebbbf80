#include "gguf_file.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "ggml_log.h"
#include "logo/errors.h"

namespace logo::core {

std::string shape_string(const std::vector<int64_t> & ne) {
    std::ostringstream out;
    out << "[";
    for (size_t i = 0; i < ne.size(); ++i) out << (i ? ", " : "") << ne[i];
    out << "]";
    return out.str();
}

std::string shape_string(const ggml_tensor * t) {
    std::vector<int64_t> ne(t->ne, t->ne + ggml_n_dims(t));
    return shape_string(ne);
}

void check_gguf_version(const std::string & path, uint32_t version) {
    // ggml's reader (gguf.cpp) takes versions 2 and 3 (they differ only in allowing big-endian files),
    // refuses 0, version 1 (32-bit counts) and anything newer; files are little-endian here. A version
    // whose low 16 bits are zero is a small version written in the other byte order.
    if (version >= kGgufMinVersion && version <= GGUF_VERSION) return;
    std::string supported = "logo-cpp reads GGUF versions ";
    for (uint32_t v = kGgufMinVersion; v <= GGUF_VERSION; ++v) {
        supported += std::to_string(v) + (v == GGUF_VERSION ? "" : v + 1 == GGUF_VERSION ? " and " : ", ");
    }
    supported += " (little-endian)";
    std::string found = "'" + path + "' is GGUF version " + std::to_string(version);
    if (version != 0 && (version & 0xFFFFu) == 0) {
        const uint32_t swapped = (version >> 24) | ((version >> 8) & 0xFF00u);
        found += " (version " + std::to_string(swapped) + " written big-endian?)";
    } else if (version == 1) {
        found += " (GGUFv1, 32-bit counts: convert it again with a current llama.cpp)";
    }
    throw FormatError(found + "; " + supported);
}

GgufFile::GgufFile(const std::string & path_) : path(path_) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) throw FileNotFound("no such file: '" + path + "'");
    if (S_ISDIR(st.st_mode)) throw FileError("'" + path + "' is a directory, expected a GGUF file");
    if (!S_ISREG(st.st_mode)) throw FileError("'" + path + "' is not a regular file");
    file_size = size_t(st.st_size);
    if (file_size == 0) throw FormatError("'" + path + "' is empty, expected a GGUF file");

    // The magic and the version are checked here so that a foreign or newer file gets a clear message,
    // not a line in ggml's log and "corrupt header".
    {
        FILE * f = std::fopen(path.c_str(), "rb");
        if (!f) throw FileError("cannot open '" + path + "' for reading");
        unsigned char head[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const size_t n = std::fread(head, 1, 8, f);
        std::fclose(f);
        if (n < 4 || head[0] != 'G' || head[1] != 'G' || head[2] != 'U' || head[3] != 'F') {
            throw FormatError("'" + path + "' is not a GGUF file (no GGUF magic at its start)");
        }
        if (n < 8) {
            throw FormatError("'" + path + "' is truncated: its GGUF header needs at least 8 bytes (magic and "
                              "version) but the file has " + std::to_string(n));
        }
        check_gguf_version(path, uint32_t(head[4]) | uint32_t(head[5]) << 8 | uint32_t(head[6]) << 16 |
                                     uint32_t(head[7]) << 24);
    }

    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/&meta};
    {
        // ggml's reader says what it could not read on the log; that goes into our message instead.
        LogCapture log;
        gguf = gguf_init_from_file(path.c_str(), params);
        if (!gguf) {
            const std::string ggml_says = log.take_errors();
            throw FormatError("'" + path + "' is not a readable GGUF file (truncated or corrupt header; the file has " +
                              std::to_string(file_size) + " bytes)" + (ggml_says.empty() ? "" : ": ggml: " + ggml_says));
        }
    }

    // gguf only parses the header; a file cut inside the tensor data parses fine, so check every extent.
    const size_t data_offset = gguf_get_data_offset(gguf);
    const int64_t n_tensors = gguf_get_n_tensors(gguf);
    for (int64_t i = 0; i < n_tensors; ++i) {
        const size_t end = data_offset + gguf_get_tensor_offset(gguf, i) + gguf_get_tensor_size(gguf, i);
        if (end > file_size) {
            std::string name = gguf_get_tensor_name(gguf, i);
            gguf_free(gguf);
            ggml_free(meta);
            gguf = nullptr;
            meta = nullptr;
            throw FormatError("'" + path + "' is truncated: tensor '" + name + "' needs bytes up to " +
                              std::to_string(end) + " but the file has " + std::to_string(file_size));
        }
    }
}

GgufFile::~GgufFile() {
    if (gguf) gguf_free(gguf);
    if (meta) ggml_free(meta);
}

int64_t GgufFile::key_id(const std::string & key) const { return gguf_find_key(gguf, key.c_str()); }

bool GgufFile::has_key(const std::string & key) const { return key_id(key) >= 0; }

std::string GgufFile::get_string(const std::string & key) const {
    const int64_t id = key_id(key);
    if (id < 0) throw FormatError("'" + path + "': missing required key '" + key + "'");
    if (gguf_get_kv_type(gguf, id) != GGUF_TYPE_STRING) {
        throw FormatError("'" + path + "': key '" + key + "' should be a string");
    }
    return gguf_get_val_str(gguf, id);
}

std::string GgufFile::get_string(const std::string & key, const std::string & fallback) const {
    return has_key(key) ? get_string(key) : fallback;
}

int64_t GgufFile::get_int(const std::string & key) const {
    const int64_t id = key_id(key);
    if (id < 0) throw FormatError("'" + path + "': missing required key '" + key + "'");
    switch (gguf_get_kv_type(gguf, id)) {
        case GGUF_TYPE_UINT8:  return gguf_get_val_u8(gguf, id);
        case GGUF_TYPE_INT8:   return gguf_get_val_i8(gguf, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(gguf, id);
        case GGUF_TYPE_INT16:  return gguf_get_val_i16(gguf, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(gguf, id);
        case GGUF_TYPE_INT32:  return gguf_get_val_i32(gguf, id);
        case GGUF_TYPE_UINT64: return int64_t(gguf_get_val_u64(gguf, id));
        case GGUF_TYPE_INT64:  return gguf_get_val_i64(gguf, id);
        // Some converters write per-layer arrays; llama.cpp accepts them when all entries agree.
        case GGUF_TYPE_ARRAY: {
            const gguf_type at = gguf_get_arr_type(gguf, id);
            const size_t n = gguf_get_arr_n(gguf, id);
            if (n > 0 && (at == GGUF_TYPE_INT32 || at == GGUF_TYPE_UINT32)) {
                const int32_t * v = static_cast<const int32_t *>(gguf_get_arr_data(gguf, id));
                for (size_t i = 1; i < n; ++i) {
                    if (v[i] != v[0]) {
                        throw FormatError("'" + path + "': key '" + key +
                                          "' differs between layers, which this runtime does not support");
                    }
                }
                return v[0];
            }
            break;
        }
        default: break;
    }
    throw FormatError("'" + path + "': key '" + key + "' should be an integer");
}

int64_t GgufFile::get_int(const std::string & key, int64_t fallback) const {
    return has_key(key) ? get_int(key) : fallback;
}

bool GgufFile::has_float(const std::string & key) const { return has_key(key); }

double GgufFile::get_float(const std::string & key, double fallback) const {
    const int64_t id = key_id(key);
    if (id < 0) return fallback;
    switch (gguf_get_kv_type(gguf, id)) {
        case GGUF_TYPE_FLOAT32: return gguf_get_val_f32(gguf, id);
        case GGUF_TYPE_FLOAT64: return gguf_get_val_f64(gguf, id);
        default: throw FormatError("'" + path + "': key '" + key + "' should be a float");
    }
}

int64_t GgufFile::get_int_in(const std::string & key, int64_t lo, int64_t hi) const {
    const int64_t v = get_int(key);
    if (v < lo || v > hi) {
        throw FormatError("'" + path + "': key '" + key + "' is " + std::to_string(v) + "; expected an integer in [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return v;
}

int64_t GgufFile::get_int_in(const std::string & key, int64_t fallback, int64_t lo, int64_t hi) const {
    return has_key(key) ? get_int_in(key, lo, hi) : fallback;
}

double GgufFile::get_float_in(const std::string & key, double fallback, double lo, double hi,
                              const std::string & expected) const {
    const double v = get_float(key, fallback);
    // NaN fails both comparisons, so test for what is wanted rather than for what is not.
    if (!(std::isfinite(v) && v >= lo && v <= hi)) {
        std::ostringstream found;
        found.precision(9);
        found << v;
        throw FormatError("'" + path + "': key '" + key + "' is " + found.str() + "; expected " + expected);
    }
    return v;
}

ggml_tensor * GgufFile::find_tensor(const std::string & name) const {
    return ggml_get_tensor(meta, name.c_str());
}

size_t GgufFile::tensor_file_offset(const std::string & name) const {
    const int64_t id = gguf_find_tensor(gguf, name.c_str());
    if (id < 0) throw FormatError("'" + path + "': missing tensor '" + name + "'");
    return gguf_get_data_offset(gguf) + gguf_get_tensor_offset(gguf, id);
}

std::vector<std::string> GgufFile::tensor_names() const {
    std::vector<std::string> names;
    const int64_t n = gguf_get_n_tensors(gguf);
    for (int64_t i = 0; i < n; ++i) names.emplace_back(gguf_get_tensor_name(gguf, i));
    return names;
}

}  // namespace logo::core
