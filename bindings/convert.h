// Conversions the binding files share: C++ results to Python objects.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "logo/logo.h"

namespace nb = nanobind;

// Text leaves C++ as bytes: a piece may be any byte string the model produced (Python decodes it).
inline nb::bytes as_bytes(const std::string & s) { return nb::bytes(s.data(), s.size()); }

// A TokenLogprob as (token, logprob, [(token, logprob), ...]) (top alternatives, most likely first).
inline nb::tuple logprob_to_tuple(const logo::TokenLogprob & t) {
    nb::list top;
    for (const auto & [token, logprob] : t.top) top.append(nb::make_tuple(token, logprob));
    return nb::make_tuple(t.token, t.logprob, top);
}

inline nb::list logprobs_to_list(const std::vector<logo::TokenLogprob> & entries) {
    nb::list out;
    for (const auto & t : entries) out.append(logprob_to_tuple(t));
    return out;
}

// Completion as a dict; "logprobs" (a list of logprob tuples, one per token; empty unless asked for) and "eos"
// (a logprob tuple, or None).
inline nb::dict completion_to_dict(const logo::Completion & c) {
    nb::dict d;
    d["text"] = as_bytes(c.text);
    d["tokens"] = c.tokens;
    d["finish_reason"] = c.finish_reason;
    nb::dict t;
    t["n_prompt"] = c.timings.n_prompt;
    t["n_generated"] = c.timings.n_generated;
    t["prefill_seconds"] = c.timings.prefill_seconds;
    t["decode_seconds"] = c.timings.decode_seconds;
    t["prefill_tokens_per_second"] = c.timings.prefill_tokens_per_second();
    t["decode_tokens_per_second"] = c.timings.decode_tokens_per_second();
    d["timings"] = t;
    d["logprobs"] = logprobs_to_list(c.logprobs);
    d["eos"] = c.eos.token >= 0 ? nb::object(logprob_to_tuple(c.eos)) : nb::none();
    return d;
}

// Defined in batch.cpp: logo::ContinuousBatch as _core.ContinuousBatch.
void bind_batch(nb::module_ & m);
