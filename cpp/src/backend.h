// Choosing the compute device through ggml's backend registry, and the CPU thread setting.
#pragma once

#include <string>
#include <vector>

#include "ggml-backend.h"

namespace logo::core {

// Names of the devices the linked ggml offers, e.g. {"CPU", "CUDA0"}.
std::vector<std::string> available_devices();

// "auto" takes the first GPU when the linked ggml has one, else the CPU; "cpu", "gpu", "cuda", "metal"
// or a device name as listed by available_devices() (case-insensitive) pick one. Throws invalid_argument.
ggml_backend_dev_t select_device(const std::string & request);

ggml_backend_dev_t cpu_device();

bool is_cpu_device(ggml_backend_dev_t dev);

// Sets the worker threads of a CPU backend; a no-op for other backends.
void set_backend_threads(ggml_backend_t backend, int n_threads);

int default_thread_count();

}  // namespace logo::core
