// Error types of the runtime. Each one maps to one Python exception class at the binding edge,
// so a caller can tell "the file is not there" from "the file is not a model we can run".
#pragma once

#include <stdexcept>
#include <string>

namespace logo {

// A path that cannot be read: a directory, no permission, a failed mapping (Python: OSError).
struct FileError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A path that does not exist (Python: FileNotFoundError).
struct FileNotFound : FileError {
    using FileError::FileError;
};

// A file that exists but is not what we need: not GGUF, truncated, wrong architecture,
// a tensor missing or of the wrong shape (Python: logo_cpp.FormatError, a ValueError).
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// More tokens than the context holds (Python: logo_cpp.ContextOverflowError, a ValueError).
struct ContextOverflow : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Bad arguments are std::invalid_argument (Python: ValueError).
// Backend failures (allocation, compute) are std::runtime_error (Python: RuntimeError).

}  // namespace logo

namespace logo {

// One Context used from two threads at once (give each thread its own Context).
struct ConcurrentUse : std::logic_error {
    using std::logic_error::logic_error;
};

}  // namespace logo
