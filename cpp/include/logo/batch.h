// Continuous batching for servers: requests start and end between decode steps, and every step decodes
// all running requests in one graph evaluation, each with its own adapter mixture.
//
//   logo::ContinuousBatch batch(model, {/*n_ctx=*/2048, /*n_seq (slots)=*/8});
//   batch.start(id, prompt, options, &pool, mixture);   // prefill + first token, between steps
//   while (batch.n_active() > 0) for (auto & e : batch.step()) ...;   // e.text, e.finished, e.completion
//
// A request's output does not depend on what runs beside it: greedy decoding gives the same tokens alone
// or in a full batch. A ContinuousBatch belongs to one thread at a time (ConcurrentUse otherwise), except for
// abort(), which any thread may call while another runs start() or step().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "logo/logo.h"

namespace logo {

namespace core {
class BatchDecoder;
}

// How slots hold their mixtures. stacked: each slot its own concatenated pair (each step reads every running
// slot's k adapters; best for large pools). pooled: the pool stacked once plus per-slot weights (each step reads
// the pool once; best for small pools and many slots). automatic: pooled when the pool's ranks per weight are at
// most 64 per slot, else stacked.
enum class SlotLayout { automatic, stacked, pooled };

class ContinuousBatch {
public:
    // params.n_seq is the number of slots (requests decoding at once); params.n_ctx the positions of each.
    // `pool`, when given, is the pool requests will draw their mixtures from (it decides the automatic layout
    // and the pooled layout stacks it up front); start() may still be given any pool of the same model.
    ContinuousBatch(const Model & model, const ContextParams & params = {}, const AdapterPool * pool = nullptr,
                    SlotLayout layout = SlotLayout::automatic);
    ~ContinuousBatch();
    ContinuousBatch(const ContinuousBatch &) = delete;
    ContinuousBatch & operator=(const ContinuousBatch &) = delete;

    int n_slots() const;
    int n_active() const;  // requests running (slots in use)
    int n_ctx() const;
    SlotLayout layout() const;  // the layout in use (never automatic)
    std::vector<int64_t> active() const;  // their ids

    // Starts request `id` in a free slot with `mixture` over `pool` (none: the base model): prefills the
    // prompt and samples the first token, whose text (if final) the event carries; the event is finished
    // when the request ended at once. The mixture is copied: the pool may change afterwards.
    // Throws std::invalid_argument (no free slot, an id already running, bad options or mixture, empty
    // prompt) or ContextOverflow (a prompt longer than n_ctx); every slot stays as it was.
    RequestEvent start(int64_t id, const std::vector<Token> & prompt, const GenerateOptions & options,
                       const AdapterPool * pool = nullptr, const Mixture & mixture = {});
    // Chunked prefill: checks and takes a slot like start(), but the prompt is prefilled by the following step()
    // calls, prefill_chunk() tokens each, before their decode steps: the running requests keep producing a token
    // per step meanwhile instead of waiting for the whole prompt. The step that evaluates the last chunk returns
    // the request's first event (RequestEvent::started set), after which it decodes with the others; greedy
    // tokens equal start()'s. One request is prefilled at a time (invalid_argument while another one is); it
    // takes the highest slot, so it needs a free slot as start() does. abort()/cancel() end it between chunks
    // (abort: a finished "cancelled" event from the next step()). Returns the finished event of a request that
    // ends at once (max_tokens 0), else nothing.
    std::optional<RequestEvent> begin(int64_t id, const std::vector<Token> & prompt, const GenerateOptions & options,
                                      const AdapterPool * pool = nullptr, const Mixture & mixture = {});
    bool prefilling() const;  // a request begin() started is still being prefilled
    int prefill_chunk() const;  // prompt tokens per step of such a prefill (default params.n_batch)
    void set_prefill_chunk(int n_tokens);  // invalid_argument below 1
    // One step: a prefill chunk of the request begin() started (if any), then one decode step for every running
    // request; finished ones free their slots before it returns.
    std::vector<RequestEvent> step();
    // Ends a running request at once (its client went away) and frees its slot; false if none runs.
    bool cancel(int64_t id);
    // Thread-safe: marks request `id` to end, from any thread, while start() or step() may run on another (a
    // server's HTTP thread when a client goes away). A request being started stops its prefill before the next
    // n_batch chunk of its prompt, so a long prompt frees its slot within one chunk's time: start() returns a
    // finished event with completion.finish_reason "cancelled" and no text. A running request ends when the next
    // step() begins, with the same event and no new token. Other requests are untouched. Returns false (and
    // remembers nothing) when `id` is neither being started nor running.
    bool abort(int64_t id);

private:
    std::shared_ptr<core::Model> model_;
    std::unique_ptr<core::BatchDecoder> decoder_;
    struct Guard;
    std::unique_ptr<Guard> guard_;
    template <typename Go>
    auto with_selection(const AdapterPool * pool, const Mixture & mixture, Go go) const;
};

}  // namespace logo
