"""OpenAI's ``logprobs`` objects from the runtime's token log-probabilities (the binding's (token, logprob,
[(token, logprob), ...]) tuples; logo/types.h TokenLogprob: log-softmax of the raw logits at temperature 1).

- chat completions: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
  "refusal": null}`` (OpenAI's ChatCompletionTokenLogprob).
- legacy completions: ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` where each top_logprobs
  item maps the text of the ``logprobs`` most likely tokens, and of the sampled one, to their log-probabilities
  (OpenAI: "up to logprobs + 1 elements"; two tokens of one text share a key, the likelier kept).

A token's text is its own bytes decoded alone (special tokens as their text, e.g. "<|im_end|>"; a token that
holds part of a UTF-8 character shows U+FFFD, its ``bytes`` are exact). The end-of-generation token that ended a
choice is not listed (OpenAI lists content tokens only), and a token holding a stop string is (its text is cut
from the answer, its log-probability was computed).
"""

from __future__ import annotations

from typing import Callable

Piece = Callable[[int], bytes]


def _text(piece: Piece, token: int) -> tuple[str, list[int]]:
    raw = piece(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_content(piece: Piece, entries: list) -> list[dict]:
    """Chat's ``logprobs.content`` items for ``entries`` (the binding's tuples); ``piece`` gives a token's bytes."""
    out = []
    for token, logprob, top in entries:
        text, raw = _text(piece, token)
        alternatives = []
        for t, lp in top:
            alt_text, alt_raw = _text(piece, t)
            alternatives.append({"token": alt_text, "logprob": lp, "bytes": alt_raw})
        out.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
    return out


def chat_logprobs(content: list[dict]) -> dict:
    return {"content": content, "refusal": None}


class CompletionLogprobs:
    """Legacy completions' ``logprobs`` for one choice, built chunk by chunk: text_offset counts characters of the
    choice's text from 0 (no echo) across the chunks of a stream."""

    def __init__(self, piece: Piece):
        self.piece = piece
        self.offset = 0

    def take(self, entries: list) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for token, logprob, top in entries:
            text, _ = _text(self.piece, token)
            alternatives: dict[str, float] = {}
            for t, lp in [*top, (token, logprob)]:
                key = _text(self.piece, t)[0]
                alternatives[key] = max(lp, alternatives.get(key, lp))
            tokens.append(text)
            values.append(logprob)
            tops.append(alternatives)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
