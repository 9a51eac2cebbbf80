"""The `logo-cpp serve` command and the uvicorn runner. Importing this module needs no HTTP packages, so the
CLI can say plainly when the `server` extra is missing."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .._limits import INT32_MAX
from ..rerank import check_margin
from .defaults import DEFAULT_PREFILL_CHUNK

MISSING_EXTRA = ('logo-cpp serve needs the server extra (Starlette, uvicorn, pydantic): '
                 'pip install "logo-cpp[server]"')


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..chat import add_route_on_argument
    from ..cli import add_cache_args, add_mixture_weight_args, add_rerank_argument, thread_count

    p.add_argument("--model", "-m", default=None,
                   help="base model GGUF file (default: the shipped default model, SmolLM2-135M-Instruct)")
    p.add_argument("--adapters", "-a", nargs="*", default=None,
                   help="adapter GGUF files, PEFT adapter directories, or directories of them (default: the default "
                        "model's pool; give no value for none)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", "-np", type=int, default=8,
                   help="slots: requests decoded together (default 8)")
    p.add_argument("--ctx-size", "-c", type=int, default=2048,
                   help="context of each slot in tokens: prompt plus generated text (default 2048)")
    p.add_argument("--batch-size", "-b", type=int, default=512,
                   help="prompt tokens per prefill evaluation (default 512); a request whose client goes away during "
                        "its prefill frees its slot once the chunk in progress ends")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                   help="prompt tokens of a long prompt prefilled per decode step (default "
                        f"{DEFAULT_PREFILL_CHUNK}): the running streams keep getting tokens while it is prefilled, "
                        "each delayed by one chunk's evaluation; larger chunks prefill faster, smaller ones delay the "
                        "running streams less")
    p.add_argument("--queue", type=int, default=64,
                   help="requests that may wait for a slot; more are refused with 503 (default 64)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: $LOGO_CPP_API_KEY, else none; an empty key is refused)")
    p.add_argument("--max-body-mb", type=float, default=None,
                   help="largest request body in MiB; larger ones get 413 (default: 512 bytes per context token, at "
                        "least 1 MiB: 1 MiB for --ctx-size 2048)")
    p.add_argument("--k", type=int, default=1,
                   help="LoGo: adapters per request, capped at the pool (default 1: on the shipped pool one adapter "
                        "answers better than mixtures of 3 or all 18, docs/server/chat-routing.md)")
    p.add_argument("--signal", default="norm", choices=["norm", "entropy"], help="LoGo signal (default norm)")
    p.add_argument("--probe", default="base", choices=["base", "all"], help="LoGo probe mode (default base)")
    p.add_argument("--calibration", default=None,
                   help="LoGo: how signals are calibrated before ranking (logo_cpp.router.CALIBRATIONS; "
                        "default: the router's default; 'none' is the paper's raw signal)")
    add_mixture_weight_args(p)
    add_rerank_argument(p, "needs --k 1; a reranked request's two candidate answers are generated before it starts, "
                           "while the running requests wait; the routing field reports the choice")
    add_cache_args(p)
    add_route_on_argument(p, "--chat-route-on", "for a chat request (completions probe their prompt)")
    p.add_argument("--mixture-layout", default="auto", choices=["auto", "stacked", "pooled"],
                   help="how slots hold their mixtures: the pool stacked once (pooled: small pools, many slots) or "
                        "each slot its own adapters (stacked: large pools); auto picks by the bytes a step reads")
    p.add_argument("--threads", "-t", type=thread_count, default=None, help="CPU threads (default: one per core)")
    p.add_argument("--device", default="auto", help="auto (a GPU if the linked ggml has one), cpu, or a device name")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="allow browser pages from this origin (CORS); repeatable; default none")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def default_model_paths() -> tuple[Path, Optional[list[Path]]]:
    """(base model GGUF, the shipped pool's adapter files or None when there is no pool) of the shipped default.
    Raises FileNotFoundError naming the pip command when the default model is not installed."""
    from .. import default_model

    base = default_model.base_model_path()
    try:
        files = list(default_model.adapter_files().values())
    except FileNotFoundError:
        files = None
    return base, files or None


@dataclass
class Loaded:
    model: object
    pool: object
    server: object
    app: object


def check_arguments(args) -> None:
    """Raises ValueError naming the flag for a `serve` argument out of range (before anything loads)."""
    for name in ("parallel", "ctx_size", "batch_size", "prefill_chunk", "port", "k", "threads"):
        value = getattr(args, name)
        # The core holds these as int32: a larger value would surface as "n_ctx must be ..." without the flag.
        low, high = (0, 65535) if name == "port" else (1, INT32_MAX)
        if value is not None and not low <= value <= high:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value}")
    if args.queue < 0:
        raise ValueError(f"--queue must be >= 0, got {args.queue}")
    max_body = getattr(args, "max_body_mb", None)
    if max_body is not None and not (max_body * 2**20 >= 1024 and max_body <= 2**20):  # also refuses NaN
        raise ValueError(f"--max-body-mb must be in [0.001, 1048576] (MiB), got {max_body}")
    # Flag combinations the Server refuses too (logo_cpp.server.app), checked here before anything loads.
    margin = check_margin(args.rerank)  # ValueError naming rerank_margin for a value <= 0 or not finite
    if margin is not None and (args.k != 1 or args.calibration == "none"):
        raise ValueError(f"--rerank applies to routing at k = 1 (--k 1) with calibrated signals (a --calibration "
                         f"other than 'none'); got --k {args.k}"
                         + (", --calibration none" if args.calibration == "none" else ""))
    try:  # before the model loads: a name that does not resolve would fail only at bind time, unnamed
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {args.host!r} is not an address or a name this machine resolves ({exc})") from None


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port for uvicorn (which listens on it), made before the model loads: a port in
    use fails at once, in one line naming --host/--port, instead of after the model and calibration loaded
    (seconds), and no other process can take the port meanwhile. Options as uvicorn's own bind (SO_REUSEADDR).
    Raises ValueError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ValueError(f"cannot listen on --host {host} --port {port}: {reason} (another server? pick another "
                         f"--port)") from None
    sock.set_inheritable(True)
    return sock


_KV_TOO_LARGE = re.compile(r"^a KV cache for n_ctx=\d+ and 1 sequences needs (\d+) MiB, more than the (\d+) MiB (.+?) has;")


def _server_kv_error(exc: ValueError, args) -> ValueError:
    """The model's own one-sequence KV cache (its Session) is the first the server allocates, so a --ctx-size too
    large for even one sequence fails there, in the core's words for one sequence. The server holds --parallel
    slots of --ctx-size tokens besides it: the error says so, with the memory all of them would need."""
    found = _KV_TOO_LARGE.match(str(exc))
    if found is None:
        return exc
    per_sequence, limit, device = int(found.group(1)), found.group(2), found.group(3)
    n = args.parallel + 1
    return ValueError(f"--ctx-size {args.ctx_size} with --parallel {args.parallel}: the KV caches of {n} sequences of "
                      f"{args.ctx_size} tokens ({args.parallel} slots and the model's own) need about "
                      f"{per_sequence * n} MiB, more than the {limit} MiB {device} has ({per_sequence} MiB each); "
                      f"use a smaller --ctx-size or --parallel")


def load(args, say=None) -> Loaded:
    """Model, pool, engine and ASGI app from parsed `serve` arguments. ``say``: called with one line before the
    startup calibration (the server's routing statistics), which may take seconds."""
    try:
        from .app import Server, ServerConfig, _check_api_key, api_key_from_env, build_app
    except ImportError as exc:
        raise ImportError(f"{MISSING_EXTRA} ({exc})") from None
    import logo_cpp

    check_arguments(args)
    max_body = getattr(args, "max_body_mb", None)
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty (an unset shell variable?): that would leave the server open to anyone; "
                         "give a non-empty key, or leave the option out to serve without one")
    api_key = args.api_key if args.api_key is not None else api_key_from_env()
    _check_api_key(api_key)  # before the model loads (Server checks it again)
    model_path, adapters = args.model, args.adapters
    if model_path is None:
        model_path, files = default_model_paths()
        if adapters is None:
            adapters = files or []
    try:
        model = logo_cpp.Model(model_path, n_ctx=args.ctx_size, device=args.device, n_threads=args.threads)
    except ValueError as exc:
        raise _server_kv_error(exc, args) from None
    pool = logo_cpp.AdapterPool(model, adapters) if adapters else logo_cpp.AdapterPool(model)
    config = ServerConfig(n_slots=args.parallel, n_ctx=args.ctx_size, max_queue=args.queue,
                          api_key=api_key, k=args.k, signal=args.signal, probe=args.probe,
                          calibration=args.calibration, mixture_weights=args.mixture_weights,
                          mixture_temperature=args.mixture_temperature,
                          chat_route_on=args.chat_route_on, layout=args.mixture_layout, n_batch=args.batch_size,
                          prefill_chunk=args.prefill_chunk, model_name=Path(model_path).name,
                          allow_origins=list(args.allow_origin),
                          max_body_bytes=None if max_body is None else int(max_body * 2**20),
                          rerank_margin=args.rerank)
    if say is not None and len(pool):
        say(f"logo-cpp serve: {Path(model_path).name} and {len(pool)} adapters loaded; preparing the routing statistics "
            f"(seconds on a first start; Ctrl-C stops)")
    server = Server(model, pool, config)
    return Loaded(model, pool, server, build_app(server))


def load_interruptibly(args, say=None) -> Loaded:
    """load(args, say) on a worker thread while this thread waits, so that Ctrl-C (SIGINT) or SIGTERM during the
    startup stops `logo-cpp serve` at once. Loading the model and computing the routing statistics are long calls
    into C++ (the statistics: ~12 s on 2 cores with a cold calibration cache), and Python runs a signal handler
    only when the thread the signal interrupted is back in Python: on the main thread, Ctrl-C waited for the
    calibration to end. On SIGINT or SIGTERM this prints one line and ends the process at once with 128 + the
    signal's number: os._exit, because the worker is still inside C++ with the model, and the interpreter's
    teardown under it could crash. A signal whose handler is not Python's default (ignored, or set by the
    program) keeps it. Off the main thread (no signal reaches it) this is load(args, say)."""
    if threading.current_thread() is not threading.main_thread():
        return load(args, say)
    result: dict = {}

    def work() -> None:
        try:
            result["loaded"] = load(args, say)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            result["error"] = exc

    received: list = []

    def stop(signum, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {s: signal.getsignal(s) for s in defaults}
    worker = threading.Thread(target=work, name="logo-cpp-load", daemon=True)
    try:
        for s, default in defaults.items():
            if previous[s] is default:
                signal.signal(s, stop)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)  # a signal interrupts the wait
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        print(f"logo-cpp serve: stopped by {signal.Signals(signum).name} while starting", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in result:
        raise result["error"]
    return result["loaded"]


def run(args) -> int:
    """Runs `logo-cpp serve` in the foreground until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError(MISSING_EXTRA) from None
    t0 = time.perf_counter()
    check_arguments(args)
    sock = bind(args.host, args.port)  # before the model loads: a port in use fails at once
    try:
        loaded = load_interruptibly(args, say=lambda line: print(line, flush=True))
    except BaseException:
        sock.close()
        raise
    model, pool, server = loaded.model, loaded.pool, loaded.server
    log = logging.getLogger("uvicorn.error")
    print(f"logo-cpp serve: {Path(model.path).name} ({model.device}), {len(pool)} adapters, {args.parallel} slots of "
          f"{args.ctx_size} tokens ({server.engine.batch.layout} mixtures), loaded in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if server.warm_up_seconds is not None:
        print(f"logo-cpp serve: routing statistics ready in {server.warm_up_seconds:.1f} s, before the first request "
              f"({len(server.warm_up_routes)} signal x calibration choices; the calibration disk cache keeps them for "
              f"the next start unless it is off)", flush=True)
    if server.config.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach this address can use it", args.host)
    config = uvicorn.Config(loaded.app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5)
    try:
        _uvicorn_server_class()(config, server.engine).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it delayed for the graceful shutdown (as uvicorn.run)
        pass
    return 0


def _uvicorn_server_class():
    import uvicorn

    class ShuttingDown(uvicorn.Server):
        """uvicorn's server, which on Ctrl-C (SIGINT/SIGTERM) first ends every running and waiting request with
        an error event ("the server is shutting down"; streams then get `data: [DONE]`), so their connections
        close at once instead of being cut after the graceful-shutdown timeout with no final event."""

        def __init__(self, config, engine):
            super().__init__(config)
            self.engine = engine

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if sockets is not None and self.started:  # uvicorn says where it listens only on sockets it bound
                self._log_started_message(sockets)

        def handle_exit(self, sig, frame) -> None:
            # A signal handler may run while the main thread holds the engine's lock: end the requests from
            # another thread.
            threading.Thread(target=self.engine.shutdown, name="logo-cpp-shutdown", daemon=True).start()
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once it has shut down, inside its event loop: a KeyboardInterrupt
            # traceback from the cancelled lifespan task. `logo-cpp serve` exits after the shutdown anyway.
            self._captured_signals.clear()

    return ShuttingDown


class BackgroundServer:
    """A server running in a thread of this process (tests, benchmarks): .url, .stop()."""

    def __init__(self, app, server, uvicorn_server, thread):
        self.app, self.server, self._uvicorn, self._thread = app, server, uvicorn_server, thread
        sock = uvicorn_server.servers[0].sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """As Ctrl-C on `logo-cpp serve`: running and waiting requests end with an error event, then uvicorn stops."""
        self.server.engine.shutdown()
        self._uvicorn.should_exit = True
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_in_thread(app, server, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0,
                    log_level: str = "warning") -> BackgroundServer:
    """Starts uvicorn on `app` in a daemon thread (port 0: a free port) and waits until it listens."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2)
    uv = _uvicorn_server_class()(config, server.engine)
    thread = threading.Thread(target=uv.run, name="logo-cpp-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            uv.should_exit = True
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    return BackgroundServer(app, server, uv, thread)
