"""The public C++ API as an outside user sees it: build and install the CMake package, build the
example against it with find_package(logo_cpp), run it; and the thread-safety rules."""

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import logo_cpp
from logo_cpp import _core

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    tmp = tmp_path_factory.mktemp("cpp")
    build, prefix, ex = tmp / "build", tmp / "prefix", tmp / "example"
    jobs = str(os.cpu_count() or 2)
    _run(["cmake", "-S", ROOT, "-B", build, "-DLOGO_BUILD_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release",
          f"-DPython_EXECUTABLE={sys.executable}"])
    _run(["cmake", "--build", build, "-j", jobs])
    _run(["cmake", "--install", build, "--prefix", prefix])
    assert (prefix / "include" / "logo" / "logo.h").exists()
    # No ggml or Python types in the public headers.
    for header in (prefix / "include" / "logo").iterdir():
        text = header.read_text()
        assert not re.search(r"ggml_\w+|#include\s*[<\"](ggml|gguf|Python|nanobind)", text), header
    _run(["cmake", "-S", ROOT / "examples", "-B", ex, f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", ex, "-j", jobs])
    return ex / "logo-run"


def test_example_streams_a_routed_answer(example, model_dir, adapter_dir):
    out = subprocess.run([example, model_dir / "llama-f32.gguf", adapter_dir, "-p", "Hello world", "-k", "2", "-n", "12",
                          "--threads", "2"], capture_output=True, timeout=300)
    stderr = out.stderr.decode()
    assert out.returncode == 0, stderr
    assert "routing (2 of 7 adapters" in stderr and "12 tokens" in stderr
    # The same answer as the Python API gives (both are the same C++ underneath).
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=1024, n_threads=2)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    expected = logo_cpp.LoGo(model, pool, k=2).generate("Hello world", max_tokens=12, temperature=0.0)
    # A random model emits arbitrary bytes; Python shows invalid UTF-8 as U+FFFD.
    assert out.stdout.decode("utf-8", errors="replace").rstrip("\n") == expected.text


def test_example_reports_bad_input(example, model_dir, broken_dir):
    out = subprocess.run([example, model_dir / "llama-f32.gguf", broken_dir / "adapter_wrong_shape.gguf", "-p", "Hi"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "logo-run: error:" in out.stderr and "lora_a has shape" in out.stderr


@pytest.mark.parametrize("flag,value", [("-k", "abc"), ("-k", "0"), ("-k", "99999999999999"), ("-n", "-1"),
                                        ("--threads", "2x")])
def test_example_refuses_counts_that_are_not_integers_in_range(example, model_dir, adapter_dir, flag, value):
    out = subprocess.run([example, model_dir / "llama-f32.gguf", adapter_dir, "-p", "Hi", flag, value],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and f"logo-run: {flag} takes" in out.stderr and f"got '{value}'" in out.stderr


def test_one_model_many_threads_each_with_its_own_context(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-q8_0.gguf", n_ctx=256, n_threads=1)
    pool = _core.AdapterPool(model._core)
    pool.add([str(adapter_dir / "math.gguf"), str(adapter_dir / "sql.gguf")])
    prompts = [model.tokenize(p) for p in ("Hello world", "the cat sat", "Numbers 12345", "the quick brown fox")]
    mixtures = [[(0, 1.0)], [(1, 1.0)], [(0, 0.5), (1, 0.5)], []]

    def work(i):
        session = _core.Session(model._core, n_ctx=256)
        out = session.generate([prompts[i]], max_tokens=20, temperature=0.0, ignore_eos=True,
                               pool=pool if mixtures[i] else None, selections=[mixtures[i]] if mixtures[i] else [])
        return out[0]["tokens"]

    expected = [work(i) for i in range(4)]
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, work(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_one_context_from_two_threads_is_refused(model_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=512, n_threads=1)
    session = _core.Session(model._core, n_ctx=512)
    ids = model.tokenize("the quick brown fox " * 20)
    started = threading.Event()
    errors = []

    def long_generation():
        started.set()
        while True:
            try:
                session.generate([ids], max_tokens=300, temperature=0.0, ignore_eos=True)
                return
            except _core.ConcurrentUseError:
                continue  # the main thread held the context at that instant: the rule works both ways

    worker = threading.Thread(target=long_generation)
    worker.start()
    started.wait()
    while worker.is_alive() and not errors:
        try:
            session.clear_all()  # harmless if the worker has not entered yet
        except _core.ConcurrentUseError as exc:
            errors.append(str(exc))
    worker.join()
    assert errors and "in use by another thread" in errors[0]
