"""Text as the tokenizer takes it: bytes, passed on unchanged.

llama.cpp tokenizes raw bytes (invalid UTF-8 and NUL bytes included: byte-fallback and byte-level
vocabularies have a token for every byte), so every prompt argument accepts ``bytes`` as well as ``str``.
A ``str`` is encoded as UTF-8. A ``str`` holding lone surrogates cannot be: those in U+DC80..U+DCFF are
how Python carries undecodable bytes in a str (PEP 383: ``sys.argv``, ``os.fsdecode``), so they become
those bytes again; any other lone surrogate is a ValueError naming where it is.
"""

from __future__ import annotations

from typing import Union

Text = Union[str, bytes]


def as_bytes(text: Text, what: str = "text") -> bytes:
    """``text`` as the bytes handed to the tokenizer. Raises TypeError for anything but str, bytes,
    bytearray or memoryview; ValueError for a str with a lone surrogate outside U+DC80..U+DCFF."""
    if isinstance(text, bytes):
        return text
    if isinstance(text, (bytearray, memoryview)):
        return bytes(text)
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str or bytes, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise ValueError(f"{what} holds a lone surrogate U+{ord(char):04X} at index {exc.start}, which UTF-8 cannot "
                         f"encode; pass bytes to tokenize raw bytes") from None
