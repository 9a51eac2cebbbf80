"""The ranges of the C++ core's argument types: counts (tokens, k, top_k, threads' bound, context) are int32, and
scales, weights and temperatures float32. Python checks values against these before they reach the binding, so
an out-of-range value is a ValueError naming the argument, not a binding TypeError or an inf in the core."""

import numpy as np

INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger float becomes inf as float32
# logo/types.h kMaxTopLogprobs (OpenAI's bound on top_logprobs); tests check it against _core.max_top_logprobs.
MAX_TOP_LOGPROBS = 20
# logo/types.h kMaxMixtureWeight: the largest |weight| of an adapter in a mixture (a larger one overflows F16 in
# a quantized base's low-rank pair and every logit turns NaN; the measurement is in types.h). Tests check it
# against _core.max_mixture_weight.
MAX_MIXTURE_WEIGHT = 1000.0


MIXTURE_WEIGHT_RANGE = (f"a finite number in [-{MAX_MIXTURE_WEIGHT:g}, {MAX_MIXTURE_WEIGHT:g}] (a larger weight "
                        f"overflows the adapters' float16 product into NaN logits)")


def mixture_weight_ok(weight: float) -> bool:
    """Whether ``weight`` (a number) can weight an adapter in a mixture: finite, |weight| <= MAX_MIXTURE_WEIGHT."""
    return abs(weight) <= MAX_MIXTURE_WEIGHT  # NaN fails it too
