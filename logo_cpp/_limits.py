"""The ranges of the C++ core's argument types: counts (tokens, k, top_k, threads' bound, context) are int32, and
scales, weights and temperatures float32. Python checks values against these before they reach the binding, so
an out-of-range value is a ValueError naming the argument, not a binding TypeError or an inf in the core."""

import numpy as np

INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger float becomes inf as float32
# logo/types.h kMaxTopLogprobs (OpenAI's bound on top_logprobs); tests check it against _core.max_top_logprobs.
MAX_TOP_LOGPROBS = 20
