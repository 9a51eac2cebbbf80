// _core.ContinuousBatch: logo::ContinuousBatch (logo/batch.h) for the server's engine loop. Events are
// (id, text bytes, finished, completion dict or None, logprobs list) tuples; the GIL is released while C++ evaluates.
#include <nanobind/stl/pair.h>

#include "convert.h"

using namespace nb::literals;

namespace {

// (id, text bytes, finished, completion dict or None, [logprob tuples of the tokens accepted in this call]).
nb::tuple event_to_tuple(const logo::RequestEvent & e) {
    nb::object completion = e.finished ? nb::object(completion_to_dict(e.completion)) : nb::none();
    return nb::make_tuple(e.id, as_bytes(e.text), e.finished, completion, logprobs_to_list(e.logprobs));
}

logo::GenerateOptions batch_options(int max_tokens, float temperature, int top_k, float top_p, float min_p,
                                    uint64_t seed, const std::vector<std::string> & stop, bool ignore_eos,
                                    bool logprobs, int top_logprobs) {
    logo::GenerateOptions o;
    o.max_tokens = max_tokens;
    o.sampling = {temperature, top_k, top_p, min_p, seed};
    o.stop = stop;
    o.ignore_eos = ignore_eos;
    o.logprobs = logprobs;
    o.top_logprobs = top_logprobs;
    return o;
}

}  // namespace

void bind_batch(nb::module_ & m) {
    nb::class_<logo::ContinuousBatch>(m, "ContinuousBatch",
                                      "Continuous batching: requests start and end between decode steps; each step "
                                      "decodes every running request in one evaluation, each with its own mixture.")
        .def("__init__",
             [](logo::ContinuousBatch * self, const logo::Model & model, int n_ctx, int n_slots, int n_batch,
                const logo::AdapterPool * pool, const std::string & layout, int prefill_chunk) {
                 logo::ContextParams p;
                 p.n_ctx = n_ctx;
                 p.n_seq = n_slots;
                 p.n_batch = n_batch;
                 logo::SlotLayout l;
                 if (layout == "auto") l = logo::SlotLayout::automatic;
                 else if (layout == "stacked") l = logo::SlotLayout::stacked;
                 else if (layout == "pooled") l = logo::SlotLayout::pooled;
                 else throw std::invalid_argument("unknown layout '" + layout + "'; use 'auto', 'stacked' or 'pooled'");
                 if (prefill_chunk < 0) {
                     throw std::invalid_argument("prefill_chunk must be at least 1 token (0: n_batch), got " +
                                                 std::to_string(prefill_chunk));
                 }
                 nb::gil_scoped_release release;
                 new (self) logo::ContinuousBatch(model, p, pool, l);
                 if (prefill_chunk > 0) self->set_prefill_chunk(prefill_chunk);
             },
             "model"_a, "n_ctx"_a = 2048, "n_slots"_a = 8, "n_batch"_a = 512, "pool"_a = nb::none(),
             "layout"_a = "auto", "prefill_chunk"_a = 0)
        .def_prop_ro("prefill_chunk", &logo::ContinuousBatch::prefill_chunk,
                     "Prompt tokens each step() prefills of a request begin() started.")
        .def_prop_ro("prefilling", &logo::ContinuousBatch::prefilling,
                     "True while a request begin() started is still being prefilled.")
        .def_prop_ro("layout",
                     [](const logo::ContinuousBatch & b) {
                         return b.layout() == logo::SlotLayout::pooled ? "pooled" : "stacked";
                     })
        .def_prop_ro("n_slots", &logo::ContinuousBatch::n_slots)
        .def_prop_ro("n_active", &logo::ContinuousBatch::n_active)
        .def_prop_ro("n_ctx", &logo::ContinuousBatch::n_ctx)
        .def("active", &logo::ContinuousBatch::active, "Ids of the running requests, in slot order.")
        .def("start",
             [](logo::ContinuousBatch & b, int64_t id, const std::vector<int32_t> & prompt, int max_tokens,
                float temperature, int top_k, float top_p, float min_p, uint64_t seed,
                const std::vector<std::string> & stop, bool ignore_eos, const logo::AdapterPool * pool,
                const logo::Mixture & selection, bool logprobs, int top_logprobs) {
                 const logo::GenerateOptions o = batch_options(max_tokens, temperature, top_k, top_p, min_p, seed,
                                                               stop, ignore_eos, logprobs, top_logprobs);
                 logo::RequestEvent e;
                 {
                     nb::gil_scoped_release release;
                     e = b.start(id, prompt, o, pool, selection);
                 }
                 return event_to_tuple(e);
             },
             "id"_a, "prompt"_a, "max_tokens"_a = 128, "temperature"_a = 0.8f, "top_k"_a = 40, "top_p"_a = 0.95f,
             "min_p"_a = 0.05f, "seed"_a = 0, "stop"_a = std::vector<std::string>{}, "ignore_eos"_a = false,
             "pool"_a = nb::none(), "selection"_a = logo::Mixture{}, "logprobs"_a = false, "top_logprobs"_a = 0,
             "Prefills a request in a free slot and samples its first token; returns its first event.")
        .def("begin",
             [](logo::ContinuousBatch & b, int64_t id, const std::vector<int32_t> & prompt, int max_tokens,
                float temperature, int top_k, float top_p, float min_p, uint64_t seed,
                const std::vector<std::string> & stop, bool ignore_eos, const logo::AdapterPool * pool,
                const logo::Mixture & selection, bool logprobs, int top_logprobs) -> nb::object {
                 const logo::GenerateOptions o = batch_options(max_tokens, temperature, top_k, top_p, min_p, seed,
                                                               stop, ignore_eos, logprobs, top_logprobs);
                 std::optional<logo::RequestEvent> e;
                 {
                     nb::gil_scoped_release release;
                     e = b.begin(id, prompt, o, pool, selection);
                 }
                 if (!e) return nb::none();
                 return event_to_tuple(*e);
             },
             "id"_a, "prompt"_a, "max_tokens"_a = 128, "temperature"_a = 0.8f, "top_k"_a = 40, "top_p"_a = 0.95f,
             "min_p"_a = 0.05f, "seed"_a = 0, "stop"_a = std::vector<std::string>{}, "ignore_eos"_a = false,
             "pool"_a = nb::none(), "selection"_a = logo::Mixture{}, "logprobs"_a = false, "top_logprobs"_a = 0,
             "Chunked prefill: takes a slot for a request (checked as start() checks) whose prompt the next step() "
             "calls prefill, prefill_chunk tokens each, before their decode steps; the step that ends it returns its "
             "first event. None, or the finished event of a request that ends at once (max_tokens 0). One request "
             "is prefilled at a time (ValueError while another one is).")
        .def("step",
             [](logo::ContinuousBatch & b) {
                 std::vector<logo::RequestEvent> events;
                 {
                     nb::gil_scoped_release release;
                     events = b.step();
                 }
                 nb::list out;
                 for (const auto & e : events) out.append(event_to_tuple(e));
                 return out;
             },
             "One step: a chunk of the prefill begin() started (its first event when that ends it), then one decode "
             "step for every running request; returns the events in that order.")
        .def("cancel", &logo::ContinuousBatch::cancel, "id"_a, "Ends a running request and frees its slot.")
        .def("abort", &logo::ContinuousBatch::abort, "id"_a,
             "Thread-safe: marks a request being started or running to end (another thread may be inside start() or "
             "step()). A prefill stops before its next n_batch chunk and start() returns a finished event with "
             "finish_reason 'cancelled'; a running request ends with that event when the next step() begins. "
             "False when no such request is being started or running.");
}
