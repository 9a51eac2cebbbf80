#!/usr/bin/env bash
# Coverage-guided fuzzing of model loading, adapter loading (with pool validation against a base) and
# tokenization: libFuzzer targets (fuzz/) over the public C++ API, built with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
#   tools/fuzz.sh build                      # the three targets (logo_core instrumented)
#   tools/fuzz.sh seeds                      # seed corpora and fixed files from logo_cpp.synthetic
#   tools/fuzz.sh run TARGET SECONDS         # fuzz_model | fuzz_adapter | fuzz_tokenize; resumes its corpus
#
# By default the targets link the ggml and libllama of the installed llama-cpp-python wheel (uninstrumented:
# the fuzzer's coverage and the sanitizers cover logo_core, the code this project writes, and a crash inside
# ggml or libllama still stops the run). LOGO_FUZZ_LLAMA=source builds ggml and libllama from
# llama-cpp-python's own vendored sources with the same instrumentation first (coverage then reaches the GGUF
# parser and the tokenizers; about an hour of compiling on 2 cores).
#
# Work files live in $LOGO_FUZZ_WORK (default build/fuzz-work: corpora, fixed files, logs); each run appends
# one line (executions, coverage, corpus, crashes) to docs/fuzz/runs.tsv, and crash inputs are copied to
# build/fuzz-work/crashes/TARGET/ to become regression files in tests/fuzz_regressions/.
# Needs clang with libFuzzer (Debian: clang-14 libfuzzer-14-dev) and the project's Python environment
# (logo_cpp and llama_cpp importable: the seeds and the wheel's libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="${LOGO_FUZZ_WORK:-$root/build/fuzz-work}"
cc="${FUZZ_CC:-$(command -v clang-14 || command -v clang)}"
cxx="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++)}"
sanitize="address,undefined,fuzzer-no-link"
jobs="${FUZZ_BUILD_JOBS:-2}"
mkdir -p "$work"

build() {
    local flags="-fsanitize=$sanitize -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
    local llama=(-DLOGO_USE_LLAMA_CPP_PYTHON=ON -DPython_EXECUTABLE="$(command -v python3)")
    if [ "${LOGO_FUZZ_LLAMA:-wheel}" = source ]; then
        local src="${LLAMA_CPP_SOURCE:-}"
        if [ -z "$src" ]; then
            # llama-cpp-python's sdist holds the exact llama.cpp the wheel is built from.
            if [ ! -d "$work/src/llama_cpp_python-0.3.36" ]; then
                python3 -m pip download --quiet --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d "$work/src"
                tar -xzf "$work/src/llama_cpp_python-0.3.36.tar.gz" -C "$work/src"
            fi
            src="$work/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
        fi
        cmake -S "$src" -B "$work/llama-build" -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
            -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_COMMON=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
            -DCMAKE_INSTALL_PREFIX="$work/llama-install" > "$work/llama-configure.log"
        cmake --build "$work/llama-build" -j "$jobs" > "$work/llama-build.log"
        cmake --install "$work/llama-build" > /dev/null
        llama=(-DLOGO_USE_LLAMA_CPP_PYTHON=OFF -DCMAKE_PREFIX_PATH="$work/llama-install")
    fi
    cmake -S "$root" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER="$cc" \
        -DCMAKE_CXX_COMPILER="$cxx" -DLOGO_BUILD_PYTHON=OFF "${llama[@]}" \
        -DLOGO_BUILD_FUZZERS=ON -DLOGO_SANITIZE="$sanitize" > "$work/configure.log"
    cmake --build "$work/build" -j "$jobs" --target fuzz_model fuzz_adapter fuzz_tokenize > "$work/build.log"
    echo "built $work/build/fuzz/{fuzz_model,fuzz_adapter,fuzz_tokenize}"
}

seeds() {
    rm -rf "$work/seeds" "$work/fixed"
    python3 fuzz/seeds.py "$work" > "$work/env.sh"
    cat "$work/env.sh"
}

run() {
    local target="$1" seconds="$2"
    [ -f "$work/env.sh" ] || seeds > /dev/null
    . "$work/env.sh"
    local corpus="$work/corpus/$target" crashes="$work/crashes/$target"
    mkdir -p "$corpus" "$crashes" "$work/logs" "$root/docs/fuzz"
    local log="$work/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
    # Leaks are reported at exit by LeakSanitizer; a timeout or an input over 1 GiB of memory is a finding.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    # libFuzzer writes crash-, leak-, timeout- and oom- files there (and slow-unit- ones: not findings).
    findings() { find "$crashes" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l; }
    local before
    before=$(findings)
    set +e
    "$work/build/fuzz/$target" -max_total_time="$seconds" -max_len=262144 -timeout=60 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "$work/seeds/$target" > "$log" 2>&1
    local rc=$?
    set -e
    local stats execs cov ft corp found
    # The last status line ("#N  NEW|REDUCE|pulse|DONE  cov: ... ft: ..."), not a stack frame ("#0 0x...").
    stats=$(grep -E '^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+cov:' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(echo "$stats" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$stats" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    corp=$(ls "$corpus" | wc -l)
    found=$(( $(findings) - before ))
    [ -f "$root/docs/fuzz/runs.tsv" ] || printf 'date_utc\ttarget\tseconds\texecutions\tcoverage_edges\tfeatures\tcorpus\tnew_crashes\texit\n' > "$root/docs/fuzz/runs.tsv"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$target" "$seconds" \
        "${execs:-0}" "${cov:-0}" "${ft:-0}" "$corp" "$found" "$rc" >> "$root/docs/fuzz/runs.tsv"
    tail -1 "$root/docs/fuzz/runs.tsv"
    [ "$found" -eq 0 ] || { echo "new crash inputs in $crashes (log: $log)"; return 1; }
}

case "${1:-}" in
    build) build ;;
    seeds) seeds ;;
    run) [ $# -eq 3 ] || { echo "usage: $0 run TARGET SECONDS" >&2; exit 2; }; run "$2" "$3" ;;
    *) echo "usage: $0 build | seeds | run TARGET SECONDS" >&2; exit 2 ;;
esac
