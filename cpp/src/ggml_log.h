// ggml and libllama write to one process-wide log (llama_log_set sets ggml's too). While we hand them input
// that only they can fully parse (a GGUF header, a tokenizer vocabulary), what they log is collected here
// instead of printed: when the input is bad, our exception reports their error lines once, in a message that
// names the file, and the user does not see a stray log line before it. Set LOGO_GGML_LOG=1 to have every
// line of theirs printed as well (through the logger installed before: llama_cpp's, or ggml's default).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "ggml.h"

namespace logo::core {

class LogCapture {
public:
    LogCapture();   // installs the capturing logger; one capture at a time in the process (others wait)
    ~LogCapture();  // reinstalls the previous logger and passes it the error lines nobody took
    LogCapture(const LogCapture &) = delete;
    LogCapture & operator=(const LogCapture &) = delete;

    // The error lines logged so far, without their newlines, joined by "; " ("" when none). They are the
    // caller's to report from then on: the destructor does not pass them on.
    std::string take_errors();

private:
    static void on_log(ggml_log_level level, const char * text, void * user_data);

    std::unique_lock<std::recursive_mutex> exclusive_;
    ggml_log_callback previous_ = nullptr;
    void * previous_data_ = nullptr;
    bool pass_through_ = false;
    std::mutex lines_mutex_;          // a ggml worker thread may log while the capturing thread reads
    std::vector<std::string> errors_;
    bool last_was_error_ = false;     // where a GGML_LOG_LEVEL_CONT piece belongs
};

}  // namespace logo::core
