#include "backend.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <thread>

namespace logo::core {

static std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

// A build of ggml with dynamically loaded backends registers nothing until asked to.
static void ensure_backends_registered() {
    if (ggml_backend_reg_count() == 0) ggml_backend_load_all();
}

std::vector<std::string> available_devices() {
    ensure_backends_registered();
    std::vector<std::string> names;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) names.emplace_back(ggml_backend_dev_name(ggml_backend_dev_get(i)));
    return names;
}

ggml_backend_dev_t cpu_device() {
    ensure_backends_registered();
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) throw std::runtime_error("the linked ggml has no CPU backend");
    return dev;
}

bool is_cpu_device(ggml_backend_dev_t dev) { return ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU; }

static bool is_gpu(ggml_backend_dev_t dev) {
    const auto type = ggml_backend_dev_type(dev);
    return type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU;
}

ggml_backend_dev_t select_device(const std::string & request) {
    ensure_backends_registered();
    const std::string want = lower(request);
    if (want == "cpu") return cpu_device();
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const std::string name = lower(ggml_backend_dev_name(dev));
        const bool matches = want == name || ((want == "gpu" || want == "auto") && is_gpu(dev)) ||
                             (is_gpu(dev) && (want == "cuda" || want == "metal" || want == "vulkan") &&
                              name.rfind(want, 0) == 0);
        if (matches) return dev;
    }
    if (want == "auto") return cpu_device();
    std::string listed;
    for (const auto & n : available_devices()) listed += (listed.empty() ? "" : ", ") + n;
    bool has_gpu = false;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) has_gpu = has_gpu || is_gpu(ggml_backend_dev_get(i));
    // 'gpu' is offered only where it names a device: a CPU-only build must not suggest it.
    throw std::invalid_argument("device '" + request + "' is not available; this build of ggml offers: " + listed +
                                (has_gpu ? " (or 'auto', 'cpu', 'gpu')"
                                         : " (or 'auto', 'cpu'; no GPU: this build of ggml has no GPU backend)"));
}

void set_backend_threads(ggml_backend_t backend, int n_threads) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    if (!reg) return;
    auto set_threads = (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (set_threads) set_threads(backend, n_threads);
}

int default_thread_count() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 4 : int(n);
}

}  // namespace logo::core
