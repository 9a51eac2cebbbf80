"""Token ids of training examples in the two prompt formats, made by llama.cpp itself.

Tokenization and the chat template come from libllama (llama-cpp-python, vocab-only load of the base GGUF),
the code logo-cpp uses at run time, so an adapter is trained on exactly the token sequences it will see:

- ``raw``: ``text + "\\nAnswer:"``, then the completion ``" " + answer`` and the end-of-turn token.
- ``chat``: the user message rendered by libllama's chat template (``llama_chat_apply_template``, what
  ``logo_cpp.Model.apply_chat_template`` calls; for SmolLM2 plain ChatML, no system message), then ``answer``
  and the end-of-turn token.
- ``chat_system``: the same rendered by the GGUF's own Jinja template, which prepends SmolLM2's default
  system message (what llama-cpp-python's ``create_chat_completion`` and servers built on Jinja send).

The prompt and the completion are tokenized separately and concatenated: that is the sequence greedy
generation produces after the prompt.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from logo_cpp import tasks as task_meta

FORMATS = ("raw", "chat", "chat_system")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]      # prompt + completion + end-of-turn
    n_prompt: int       # the first n_prompt ids are the prompt; the loss covers the rest


class Prompter:
    """Tokenizer and chat templates of one GGUF (vocab-only load, a few MB of memory)."""

    def __init__(self, gguf_path: str):
        import gguf
        import jinja2
        import llama_cpp

        from logo_cpp._llama_cpp import avoid_amx

        avoid_amx()
        self._llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
        self.eos = int(self._llm.token_eos())
        reader = gguf.GGUFReader(str(gguf_path))
        self._template = reader.fields["tokenizer.chat_template"].contents()
        self._jinja = jinja2.Environment().from_string(self._template)

    def tokenize(self, text: str) -> list[int]:
        """libllama's tokens of ``text``, special tokens parsed, no BOS (SmolLM2's add_bos_token is false)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict]) -> str:
        """``messages`` rendered by libllama's template for this model, with the assistant turn opened."""
        import llama_cpp

        keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
        arr = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(r, c) for r, c in keep])
        tmpl = self._template.encode()
        size = 256 + sum(len(c) for _, c in keep) * 2
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(tmpl, arr, len(keep), True, buf, size)
        if n > size:
            buf = ctypes.create_string_buffer(n)
            n = llama_cpp.llama_chat_apply_template(tmpl, arr, len(keep), True, buf, n)
        if n < 0:
            raise ValueError("libllama does not know this model's chat template")
        return buf.raw[:n].decode("utf-8")

    def chat_system_prompt(self, messages: list[dict]) -> str:
        """``messages`` rendered by the GGUF's Jinja template (SmolLM2 adds its default system message)."""
        return self._jinja.render(messages=messages, add_generation_prompt=True)

    def prompt(self, text: str, fmt: str) -> str:
        """The prompt string of instruction-with-input ``text`` in format ``fmt`` (one of FORMATS)."""
        if fmt == "raw":
            return task_meta.raw_prompt(text)
        if fmt == "chat":
            return self.chat_prompt(task_meta.chat_messages(text))
        if fmt == "chat_system":
            return self.chat_system_prompt(task_meta.chat_messages(text))
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {FORMATS}")

    def encode(self, text: str, answer: str, fmt: str) -> Encoded:
        prompt = self.tokenize(self.prompt(text, fmt))
        completion = self.tokenize((" " if fmt == "raw" else "") + answer) + [self.eos]
        return Encoded(prompt + completion, len(prompt))
