"""Serving defaults that the command line needs before the C++ core is imported (``serve --help`` stays fast)."""

# Prompt tokens the engine prefills per decode step of a long prompt (chunked prefill, engine.py): each token of the
# running streams waits one chunk's evaluation while a long prompt is prefilled, and the long prompt's prefill
# takes one decode step more per chunk. The measurement behind 128 is in the README ("Serving": chunked prefill).
DEFAULT_PREFILL_CHUNK = 128
