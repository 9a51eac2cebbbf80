"""Loads the shared libraries of llama-cpp-python before our extension module.

llama_cpp opens ``llama_cpp/lib/libllama.so`` by path. Our module names ``libllama.so.0`` (the library's
SONAME), and the wheel ships both names as separate copies of one file. Opening the very file llama_cpp
opens, first, makes the dynamic loader resolve our ``libllama.so.0`` to it by SONAME and lets llama_cpp
find it already loaded: one libllama and one ggml per process, whichever package is imported first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path


def _llama_cpp_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("logo_cpp needs llama-cpp-python (pip install llama-cpp-python); it was not found")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def _library_file_name() -> str:
    if sys.platform == "darwin":
        return "libllama.dylib"
    if sys.platform == "win32":
        return "llama.dll"
    return "libllama.so"


def preload(linked_against: str) -> None:
    if linked_against != "llama-cpp-python":
        return  # built against another llama.cpp install: its RPATH finds the libraries
    path = _llama_cpp_lib_dir() / _library_file_name()
    if not path.exists():
        raise ImportError(f"llama-cpp-python is installed but its library {path} is missing")
    mode = getattr(ctypes, "RTLD_GLOBAL", 0)
    ctypes.CDLL(str(path), mode=mode)
