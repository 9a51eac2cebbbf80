"""llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`), started off ggml's AMX matmul.

    python -m logo_cpp.bench.llama_server --model base.gguf --lora_path adapter.gguf --port 8081 ...

takes exactly llama_cpp.server's arguments. It only calls ``logo_cpp._llama_cpp.avoid_amx()`` before the server's
app loads its model: ggml's AMX weight layout crashes on this project's machines (see _llama_cpp.py), and the
server has no switch of its own for it. Needs llama-cpp-python's `server` extra.
"""

from __future__ import annotations

from .._llama_cpp import avoid_amx


def main() -> None:
    avoid_amx()
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
