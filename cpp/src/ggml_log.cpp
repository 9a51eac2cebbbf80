#include "ggml_log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "llama.h"

namespace logo::core {

namespace {

// Recursive: a capture may start while the same thread holds one (a loader inside a loader).
std::recursive_mutex & capture_mutex() {
    static std::recursive_mutex m;
    return m;
}

bool pass_through_requested() {
    const char * v = std::getenv("LOGO_GGML_LOG");
    return v && *v && std::strcmp(v, "0") != 0;
}

void forward(ggml_log_callback callback, void * user_data, ggml_log_level level, const char * text) {
    if (callback) {
        callback(level, text, user_data);
    } else {
        std::fputs(text, stderr);
    }
}

std::string without_newlines(const char * text) {
    std::string s(text);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
}

}  // namespace

LogCapture::LogCapture() : exclusive_(capture_mutex()), pass_through_(pass_through_requested()) {
    llama_log_get(&previous_, &previous_data_);
    llama_log_set(&LogCapture::on_log, this);
}

LogCapture::~LogCapture() {
    llama_log_set(previous_, previous_data_);
    if (pass_through_) return;  // every line was printed already
    for (const std::string & line : errors_) forward(previous_, previous_data_, GGML_LOG_LEVEL_ERROR, (line + "\n").c_str());
}

std::string LogCapture::take_errors() {
    std::lock_guard<std::mutex> lock(lines_mutex_);
    std::string out;
    for (const std::string & line : errors_) {
        if (line.empty()) continue;
        out += (out.empty() ? "" : "; ") + line;
    }
    errors_.clear();
    return out;
}

void LogCapture::on_log(ggml_log_level level, const char * text, void * user_data) {
    auto * self = static_cast<LogCapture *>(user_data);
    if (self->pass_through_) forward(self->previous_, self->previous_data_, level, text);
    std::lock_guard<std::mutex> lock(self->lines_mutex_);
    if (level == GGML_LOG_LEVEL_CONT) {
        if (self->last_was_error_ && !self->errors_.empty()) self->errors_.back() += without_newlines(text);
        return;
    }
    self->last_was_error_ = level == GGML_LOG_LEVEL_ERROR;
    if (self->last_was_error_) self->errors_.push_back(without_newlines(text));
}

}  // namespace logo::core
