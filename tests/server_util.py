"""Helpers for the server tests: an in-process server on a free loopback port, raw HTTP through http.client
(for what the openai client would not send: malformed JSON, a disconnect mid-stream), and the openai client."""

from __future__ import annotations

import contextlib
import http.client
import json
import time

import pytest

import logo_cpp
from logo_cpp.server.app import Server, ServerConfig, build_app
from logo_cpp.server.main import start_in_thread

from conftest import THREADS

TIMEOUT = 120  # seconds for any one HTTP exchange: a hung server fails the test instead of hanging CI
SERVED_CTX = 256  # the context of the test model's server and of its Python-API reference


def serve_test_model(model_dir, adapter_dir, **config):
    """running_server over the tests' F32 model (conftest's model_dir) and all their adapters, SERVED_CTX tokens."""
    config.setdefault("n_ctx", SERVED_CTX)
    return running_server(model_dir / "llama-f32.gguf", adapter_dir, **config)


@pytest.fixture(scope="module")
def reference(model_dir, adapter_dir):
    """The Python API on the served files, for the expected answers: (Model, AdapterPool). A test module uses it
    by importing it (`from server_util import reference`)."""
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=SERVED_CTX, n_threads=THREADS)
    return model, logo_cpp.AdapterPool(model, adapter_dir)


@contextlib.contextmanager
def running_server(model_path, adapters=None, **config):
    """A server over its own Model and AdapterPool, in a thread of this process; yields the BackgroundServer."""
    n_ctx = config.setdefault("n_ctx", 256)
    model = logo_cpp.Model(model_path, n_ctx=n_ctx, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapters) if adapters else logo_cpp.AdapterPool(model)
    server = Server(model, pool, ServerConfig(**config))
    background = start_in_thread(build_app(server), server)
    try:
        yield background
    finally:
        background.stop()
        server.close()


def client(background, api_key="unused"):
    from openai import OpenAI

    return OpenAI(base_url=background.url + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


def request(background, method, path, body=None, headers=None, raw=None):
    """(status, decoded JSON or text, headers) of one plain HTTP exchange."""
    conn = http.client.HTTPConnection(background.host, background.port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        response = conn.getresponse()
        text = response.read().decode()
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = text
        return response.status, payload, dict(response.getheaders())
    finally:
        conn.close()


def wait_until(condition, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def health(background):
    status, body, _ = request(background, "GET", "/health")
    assert status == 200, body
    return body


def wait_for_port(proc, port: int, timeout: float = TIMEOUT) -> None:
    """Waits until the `logo-cpp serve` subprocess ``proc`` accepts connections on ``port``; fails the test
    with its output if it exits first, or when ``timeout`` seconds pass."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, "logo-cpp serve did not start"
            time.sleep(0.1)
