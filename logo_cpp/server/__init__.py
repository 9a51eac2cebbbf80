"""`logo-cpp serve`: an OpenAI-compatible HTTP server that routes every request with LoGo and decodes all
running requests together (continuous batching), each with its own adapter mixture.

    app.py       the HTTP layer (Starlette): the Server (requests to jobs), endpoints, errors, API key
    responses.py OpenAI response and SSE chunk formats over the engine's events, disconnect watching
    protocol.py  request validation (pydantic): OpenAI's parameters and logo-cpp's extensions
    engine.py    the engine loop: one thread over a C++ ContinuousBatch
    main.py      the command line and the uvicorn runner (also in a background thread, for tests and benchmarks)
    defaults.py  serving defaults the command line reads before the core loads (the prefill chunk)

Needs the `server` extra: pip install "logo-cpp[server]".
"""

from .main import add_arguments, run, start_in_thread

__all__ = ["add_arguments", "run", "start_in_thread"]
