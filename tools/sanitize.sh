#!/usr/bin/env bash
# Builds logo-cpp with AddressSanitizer + UndefinedBehaviorSanitizer into its own virtual environment
# (.venv-sanitize, next to the normal one) and runs pytest under them: the sanitizer runtime is preloaded
# into Python (which is not instrumented itself) and Python allocates through malloc, so ASan sees every
# heap block. Any report aborts the process that hit it, which fails the run.
#
#   tools/sanitize.sh                      # the whole test suite
#   tools/sanitize.sh tests/test_bad_input.py -k metadata    # any pytest arguments
#
# Needs GCC or clang with their sanitizer runtimes (Debian/Ubuntu: gcc ships libasan and libubsan).
# LOGO_SANITIZE overrides the sanitizer list (default address,undefined).
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize="${LOGO_SANITIZE:-address,undefined}"
venv=".venv-sanitize"
compiler="${CXX:-c++}"

runtime="$("$compiler" -print-file-name=libasan.so)"
if [ ! -e "$runtime" ]; then
    echo "sanitize.sh: $compiler has no AddressSanitizer runtime (libasan.so); install gcc or clang with it" >&2
    exit 2
fi
# Python does not link the C++ runtime; preloaded beside ASan, ASan's __cxa_throw interceptor finds it
# (else the first C++ exception fails an ASan CHECK).
cxx_runtime="$("$compiler" -print-file-name=libstdc++.so)"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
. "$venv/bin/activate"
# Build requirements first (no build isolation: the extension links the llama-cpp-python installed here).
pip install --quiet scikit-build-core nanobind "llama-cpp-python==0.3.36"
# Without build isolation scikit-build-core uses the CMake on PATH; bring one where there is none (>= 3.21).
if ! cmake --version 2>/dev/null | awk 'NR == 1 { split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 21)) }'; then
    pip install --quiet "cmake>=3.21"
fi
pip install --quiet --no-build-isolation ".[test]" \
    -C cmake.define.LOGO_SANITIZE="$sanitize" \
    -C cmake.build-type=RelWithDebInfo \
    -C build-dir="build/sanitize-{wheel_tag}"

# Reports go to files as well as aborting: pytest captures stderr, and a process that aborts loses it.
logs="build/sanitize-logs"
rm -rf "$logs"
mkdir -p "$logs"
# Leaks are not checked: CPython keeps its interned objects and module state alive until exit by design.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:log_path=$PWD/$logs/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$PWD/$logs/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONMALLOC=malloc
# A ggml abort would first attach gdb to print a backtrace (minutes on a busy machine); the report is enough.
export GGML_NO_BACKTRACE=1
# The runtime must be the first library loaded; subprocesses the tests start (the CLI) inherit it.
export LD_PRELOAD="$runtime:$cxx_runtime${LD_PRELOAD:+:$LD_PRELOAD}"
# `pytest` (not `python -m pytest`) so the checkout's logo_cpp/ does not shadow the sanitized install.
set +e
pytest "$@"
rc=$?
set -e
unset LD_PRELOAD
if compgen -G "$logs/*" > /dev/null; then
    echo "sanitizer reports ($logs):" >&2
    cat "$logs"/* >&2
    exit 1
fi
exit "$rc"
