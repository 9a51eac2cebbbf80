// Continuous batching over one Session: requests join and leave between decode steps, and every step
// advances all running requests in one graph evaluation, each with its own adapter mixture.
//
// Running requests always occupy the streams [0, n_active) of the session, so a step is one ordinary
// batch of n_active sequences; when a request ends, the last one moves into its stream (its KV rows and
// its mixture slices are copied on the device).
//
// A request started with begin() is prefilled across steps instead (chunked prefill): it waits in the highest
// stream, n_slots - 1, which release() never touches, since running requests then fill at most n_slots - 1
// streams; each step() evaluates one chunk of its prompt before the decode step of the running ones, and
// after its last chunk it moves into stream n_active (KV rows and mixture slices copied on the device).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "sequence.h"
#include "session.h"
#include "slot_mixtures.h"

namespace logo::core {

class BatchDecoder {
public:
    // `pool` and `layout` choose how slots hold their mixtures (slot_mixtures.h).
    BatchDecoder(std::shared_ptr<const Model> model, const SessionOptions & options,
                 const std::vector<const Adapter *> & pool = {}, SlotLayout layout = SlotLayout::automatic);

    int n_slots() const { return session_.n_stream(); }
    int n_active() const { return int(running_.size()); }
    int n_ctx() const { return session_.n_ctx(); }
    SlotLayout layout() const { return mixtures_->layout(); }
    std::vector<int64_t> active_ids() const;
    bool prefilling() const { return pending_ != nullptr; }
    // Prompt tokens a step() prefills of a request begin() started (at least 1; default the session's n_batch).
    int prefill_chunk() const { return prefill_chunk_; }
    void set_prefill_chunk(int n);

    // Takes the next free slot for request `id`: writes its mixture, prefills `prompt` and samples the
    // first token. Throws invalid_argument (no free slot, duplicate id, bad options, empty prompt) or
    // ContextOverflow (a prompt that leaves no room to generate), leaving every slot as it was.
    RequestEvent start(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options,
                       const Selection & selection);
    // Like start(), but the prompt is prefilled by the following step() calls, prefill_chunk() tokens each,
    // between the decode steps of the running requests (which keep producing tokens meanwhile). The step that
    // evaluates its last chunk returns its first event (RequestEvent::started). One request is prefilled at a
    // time: begin() throws invalid_argument while another one is. Checks as start() does, before any state
    // changes. Returns the finished event of a request that ends at once (max_tokens 0), else nothing.
    std::optional<RequestEvent> begin(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options,
                                      const Selection & selection);
    // One step: a prefill chunk of the request begin() started, if any, then one new token for every running
    // request in one graph evaluation. Finished requests free their slots before it returns.
    std::vector<RequestEvent> step();
    // Ends a request at once and frees its slot; false when no such request runs.
    bool cancel(int64_t id);
    // The one call safe from any thread while start() or step() runs on another: marks request `id` (being
    // started, or running) to end. A prefill stops before its next n_batch chunk (start() then returns a
    // finished event, finish_reason "cancelled", its slot free); a running request ends when the next step()
    // begins (a finished "cancelled" event, no token). False when `id` is neither starting nor running: nothing
    // is remembered for it.
    bool abort(int64_t id);

private:
    using Clock = std::chrono::steady_clock;
    struct Request {
        int64_t id;
        SequenceState state;
    };

    Session session_;
    std::unique_ptr<SlotMixtures> mixtures_;
    std::vector<Request> running_;  // running_[i] generates in stream i
    struct Pending {
        Request request;
        std::vector<int32_t> prompt;
        size_t done = 0;  // prompt tokens evaluated so far
    };
    std::unique_ptr<Pending> pending_;  // the request begin() started, in stream pending_slot()
    int prefill_chunk_;

    int pending_slot() const { return n_slots() - 1; }
    // start()/begin()'s checks, made before any state changes.
    void check_start(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options) const;
    // The pending request leaves (aborted, cancelled or failed): its stream and mixture slices are free again.
    Request drop_pending();
    // One chunk of the pending prefill; its first event when it ended (or was aborted).
    std::optional<RequestEvent> advance_prefill();
    // The first token of a request whose prompt stream `slot` holds (logits: its last token's); joins running_
    // (in stream `slot` == n_active()) unless it ended at once.
    RequestEvent first_token(Request request, int slot, std::vector<float> & logits);

    // What abort() reads and writes, under abort_mutex_ (the only state shared between threads): the ids of the
    // request being started and of the running ones, and those of them marked to end.
    mutable std::mutex abort_mutex_;
    std::unordered_set<int64_t> live_, aborted_;

    // Frees slot i, moving the last running request into it.
    void release(int slot);
    RequestEvent finished_event(Request & request, std::string text);
    RequestEvent cancelled_event(Request & request);
    bool aborted(int64_t id) const;
    void enter(int64_t id);   // a request becomes live (abort() may mark it)
    void forget(int64_t id);  // it ended: its mark goes with it
};

}  // namespace logo::core
