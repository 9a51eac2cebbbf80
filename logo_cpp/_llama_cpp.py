"""llama-cpp-python as this project's oracle and benchmark peer, kept off ggml's AMX matmul.

On CPUs with AMX (Sapphire Rapids and later) ggml's CPU backend offers an "AMX" buffer type first among its
extra (repacked) weight layouts, and its matmul segfaults on some such machines, this project's among them,
inside llama.cpp as much as inside logo-cpp (ggml-org/llama.cpp#20824, unfixed). logo-cpp skips that buffer
type itself (cpp/src/model.cpp); llama.cpp has no switch for AMX alone, so where the CPU has AMX the tests
and benchmarks load llama.cpp models with ``use_extra_bufts`` off (llama.cpp's ``--no-repack``). On x86 the
repacked layouts cover Q4_0, Q4_K, IQ4_NL and a few more; Q4_1, Q8_0, F16 and F32 weights run the same kernels
either way.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")


def model_params():
    """llama.cpp's default model parameters, with the extra buffer types off where the CPU has AMX."""
    import llama_cpp

    params = _original_default_params(llama_cpp.llama_cpp)()
    if cpu_has_amx():
        params.use_extra_bufts = False
    return params


def _original_default_params(module):
    return getattr(module, "_logo_original_model_default_params", module.llama_model_default_params)


def avoid_amx() -> None:
    """Makes ``llama_cpp.Llama(...)`` in this process load models through ``model_params()``."""
    import llama_cpp

    module = llama_cpp.llama_cpp  # what llama_cpp.Llama calls; the package re-exports it for low-level users
    if not hasattr(module, "_logo_original_model_default_params"):
        module._logo_original_model_default_params = module.llama_model_default_params
        module.llama_model_default_params = model_params
        llama_cpp.llama_model_default_params = model_params


def quiet() -> None:
    """Keeps llama.cpp's informational log lines (model loader dumps, context setup: hundreds of lines per model)
    off the user's terminal when llama-cpp-python's low-level API loads models here (the benchmarks' peer), as
    ``llama_cpp.Llama(verbose=False)`` does: its logger prints errors only. logo-cpp's own loads capture theirs
    (cpp/src/ggml_log.h); LOGO_GGML_LOG=1 keeps every line, as it does there."""
    import os

    from llama_cpp import _logger

    if os.environ.get("LOGO_GGML_LOG") != "1":
        _logger.set_verbose(False)
