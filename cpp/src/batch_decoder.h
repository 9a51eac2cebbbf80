// Continuous batching over one Session: requests join and leave between decode steps, and every step
// advances all running requests in one graph evaluation, each with its own adapter mixture.
//
// Running requests always occupy the streams [0, n_active) of the session, so a step is one ordinary
// batch of n_active sequences; when a request ends, the last one moves into its stream (its KV rows and
// its mixture slices are copied on the device).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
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

    // Takes the next free slot for request `id`: writes its mixture, prefills `prompt` and samples the
    // first token. Throws invalid_argument (no free slot, duplicate id, bad options, empty prompt) or
    // ContextOverflow (a prompt that leaves no room to generate), leaving every slot as it was.
    RequestEvent start(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options,
                       const Selection & selection);
    // One decode step: one new token for every running request in one graph evaluation. Finished
    // requests free their slots before it returns.
    std::vector<RequestEvent> step();
    // Ends a request at once and frees its slot; false when no such request runs.
    bool cancel(int64_t id);

private:
    using Clock = std::chrono::steady_clock;
    struct Request {
        int64_t id;
        SequenceState state;
    };

    Session session_;
    std::unique_ptr<SlotMixtures> mixtures_;
    std::vector<Request> running_;  // running_[i] generates in stream i

    // Frees slot i, moving the last running request into it.
    void release(int slot);
    RequestEvent finished_event(Request & request, std::string text);
};

}  // namespace logo::core
