#include "batch_decoder.h"

#include <algorithm>
#include <stdexcept>

#include "logo/errors.h"

namespace logo::core {

namespace {

double seconds_between(std::chrono::steady_clock::time_point t0, std::chrono::steady_clock::time_point t1) {
    return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace

BatchDecoder::BatchDecoder(std::shared_ptr<const Model> model, const SessionOptions & options,
                           const std::vector<const Adapter *> & pool, SlotLayout layout)
    : session_(model, options),
      mixtures_(make_slot_mixtures(*model, options.n_seq, pool, layout)),
      prefill_chunk_(std::max(options.n_batch, 1)) {}

std::vector<int64_t> BatchDecoder::active_ids() const {
    std::vector<int64_t> ids;
    for (const Request & r : running_) ids.push_back(r.id);
    return ids;
}

RequestEvent BatchDecoder::finished_event(Request & request, std::string text) {
    RequestEvent event;
    event.id = request.id;
    event.text = std::move(text);
    event.text += request.state.finish();
    event.finished = true;
    event.logprobs = request.state.new_logprobs();
    event.completion = std::move(request.state.completion);
    return event;
}

RequestEvent BatchDecoder::cancelled_event(Request & request) {
    request.state.completion.finish_reason = "cancelled";
    return finished_event(request, "");
}

bool BatchDecoder::abort(int64_t id) {
    std::lock_guard<std::mutex> lock(abort_mutex_);
    if (!live_.count(id)) return false;
    aborted_.insert(id);
    return true;
}

bool BatchDecoder::aborted(int64_t id) const {
    std::lock_guard<std::mutex> lock(abort_mutex_);
    return aborted_.count(id) != 0;
}

void BatchDecoder::enter(int64_t id) {
    std::lock_guard<std::mutex> lock(abort_mutex_);
    live_.insert(id);
}

void BatchDecoder::forget(int64_t id) {
    std::lock_guard<std::mutex> lock(abort_mutex_);
    live_.erase(id);
    aborted_.erase(id);
}

void BatchDecoder::set_prefill_chunk(int n) {
    if (n < 1) throw std::invalid_argument("prefill_chunk must be at least 1 token, got " + std::to_string(n));
    prefill_chunk_ = n;
}

void BatchDecoder::check_start(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options) const {
    options.validate();
    if (n_active() + (pending_ ? 1 : 0) >= n_slots()) {
        throw std::invalid_argument("no free slot: all " + std::to_string(n_slots()) +
                                    " slots are running requests or prefilling one");
    }
    for (const Request & r : running_) {
        if (r.id == id) throw std::invalid_argument("request id " + std::to_string(id) + " is already running");
    }
    if (pending_ && pending_->request.id == id) {
        throw std::invalid_argument("request id " + std::to_string(id) + " is already being prefilled");
    }
    if (prompt.empty()) throw std::invalid_argument("empty prompt: at least one token is needed");
    if (int(prompt.size()) > n_ctx()) {
        throw ContextOverflow("context overflow: the prompt has " + std::to_string(prompt.size()) +
                              " tokens but a slot holds " + std::to_string(n_ctx()));
    }
}

RequestEvent BatchDecoder::first_token(Request request, int slot, std::vector<float> & logits) {
    const int32_t n_vocab = int32_t(session_.model().hparams().n_vocab);
    RequestEvent event;
    event.id = request.id;
    const bool going = request.state.accept(request.state.sample(logits.data(), n_vocab, session_.model().vocab()),
                                            session_.model().vocab(), session_.length(slot), n_ctx(), event.text);
    if (!going) {
        mixtures_->clear(slot);
        session_.clear(slot);
        return finished_event(request, std::move(event.text));
    }
    event.logprobs = request.state.new_logprobs();
    running_.push_back(std::move(request));
    return event;
}

RequestEvent BatchDecoder::start(int64_t id, const std::vector<int32_t> & prompt, const GenerateOptions & options,
                                 const Selection & selection) {
    check_start(id, prompt, options);

    Request request{id, SequenceState(options)};
    Completion & c = request.state.completion;
    c.timings.n_prompt = int(prompt.size());
    if (options.max_tokens == 0) {
        c.finish_reason = "length";
        return finished_event(request, "");
    }

    // From here abort() may mark the request; it leaves live_ with its slot (release()) or at the end of start().
    enter(id);
    struct Leave {
        BatchDecoder & self;
        int64_t id;
        bool running = false;
        ~Leave() {
            if (!running) self.forget(id);
        }
    } leave{*this, id};

    const int slot = n_active();  // below the pending prefill's stream, if any (check_start)
    session_.clear(slot);
    const auto t0 = Clock::now();
    std::vector<float> logits;
    // Asked between the prompt's n_batch chunks: a client that went away during a long prefill frees its
    // slot after the chunk in progress, not after the whole prompt.
    const InterruptCheck interrupted = [this, id] { return aborted(id); };
    try {
        mixtures_->set(slot, selection);
        logits = session_.evaluate(slot, 1, prompt, false, mixtures_->terms(slot + 1), interrupted);
    } catch (const Interrupted &) {
        mixtures_->clear(slot);
        session_.clear(slot);
        c.timings.prefill_seconds = seconds_between(t0, Clock::now());
        return cancelled_event(request);
    } catch (...) {
        mixtures_->clear(slot);
        session_.clear(slot);
        throw;
    }
    c.timings.prefill_seconds = seconds_between(t0, Clock::now());
    if (aborted(id)) {  // marked during the last chunk: no token for a client that is gone
        mixtures_->clear(slot);
        session_.clear(slot);
        return cancelled_event(request);
    }
    RequestEvent event = first_token(std::move(request), slot, logits);
    leave.running = !event.finished;
    return event;
}

std::optional<RequestEvent> BatchDecoder::begin(int64_t id, const std::vector<int32_t> & prompt,
                                                const GenerateOptions & options, const Selection & selection) {
    if (pending_) {
        throw std::invalid_argument("request " + std::to_string(pending_->request.id) +
                                    " is being prefilled: begin() takes one request at a time");
    }
    check_start(id, prompt, options);
    Request request{id, SequenceState(options)};
    request.state.completion.timings.n_prompt = int(prompt.size());
    if (options.max_tokens == 0) {
        request.state.completion.finish_reason = "length";
        RequestEvent event = finished_event(request, "");
        event.started = true;
        return event;
    }
    const int slot = pending_slot();
    session_.clear(slot);
    try {
        mixtures_->set(slot, selection);
    } catch (...) {
        mixtures_->clear(slot);
        throw;
    }
    pending_ = std::make_unique<Pending>(Pending{std::move(request), prompt, 0});
    enter(id);
    return std::nullopt;
}

std::optional<RequestEvent> BatchDecoder::advance_prefill() {
    const int slot = pending_slot();
    Request & request = pending_->request;
    const int64_t id = request.id;
    if (aborted(id)) {
        Request gone = drop_pending();
        return cancelled_event(gone);
    }
    const std::vector<int32_t> & prompt = pending_->prompt;
    const size_t n = std::min(size_t(prefill_chunk_), prompt.size() - pending_->done);
    const std::vector<int32_t> chunk(prompt.begin() + std::ptrdiff_t(pending_->done),
                                     prompt.begin() + std::ptrdiff_t(pending_->done + n));
    const auto t0 = Clock::now();
    std::vector<float> logits;
    // A chunk longer than n_batch is several evaluations: abort() is asked between them too.
    const InterruptCheck interrupted = [this, id] { return aborted(id); };
    try {
        logits = session_.evaluate(slot, 1, chunk, false, mixtures_->terms(slot + 1), interrupted);
    } catch (const Interrupted &) {
        request.state.completion.timings.prefill_seconds += seconds_between(t0, Clock::now());
        Request gone = drop_pending();
        return cancelled_event(gone);
    } catch (...) {
        drop_pending();
        throw;
    }
    request.state.completion.timings.prefill_seconds += seconds_between(t0, Clock::now());
    pending_->done += n;
    if (pending_->done < prompt.size()) return std::nullopt;
    if (aborted(id)) {  // marked during the last chunk: no token for a client that is gone
        Request gone = drop_pending();
        return cancelled_event(gone);
    }
    // Its prompt is in: it joins the running requests in stream n_active (release() kept it below this one).
    const int target = n_active();
    if (target != slot) {
        session_.copy_stream(slot, target);
        mixtures_->move(session_, slot, target);
        session_.clear(slot);
    }
    Request joining = std::move(pending_->request);
    pending_.reset();
    RequestEvent event = first_token(std::move(joining), target, logits);
    event.started = true;
    if (event.finished) forget(id);
    return event;
}

BatchDecoder::Request BatchDecoder::drop_pending() {
    const int slot = pending_slot();
    mixtures_->clear(slot);
    session_.clear(slot);
    forget(pending_->request.id);
    Request gone = std::move(pending_->request);
    pending_.reset();
    return gone;
}

std::vector<RequestEvent> BatchDecoder::step() {
    std::vector<RequestEvent> events;
    // Requests abort() marked since the last step end before it evaluates; highest slot first, as below.
    for (int i = n_active() - 1; i >= 0; --i) {
        if (aborted(running_[size_t(i)].id)) {
            events.push_back(cancelled_event(running_[size_t(i)]));
            release(i);
        }
    }
    // One chunk of the prompt being prefilled, between two decode steps of the running requests.
    if (pending_) {
        if (std::optional<RequestEvent> first = advance_prefill()) events.push_back(std::move(*first));
    }
    const int n = n_active();
    if (n == 0) return events;
    std::vector<int32_t> tokens;
    for (const Request & r : running_) tokens.push_back(r.state.next);

    const auto t0 = Clock::now();
    std::vector<float> logits = session_.evaluate(0, n, tokens, false, mixtures_->terms(n));
    const double elapsed = seconds_between(t0, Clock::now());

    const int32_t n_vocab = int32_t(session_.model().hparams().n_vocab);
    const Vocab & vocab = session_.model().vocab();
    std::vector<bool> done(size_t(n), false);
    for (int i = 0; i < n; ++i) {
        SequenceState & s = running_[size_t(i)].state;
        s.completion.timings.decode_seconds += elapsed;
        RequestEvent event;
        event.id = running_[size_t(i)].id;
        float * row = logits.data() + size_t(i) * size_t(n_vocab);
        done[size_t(i)] = !s.accept(s.sample(row, n_vocab, vocab), vocab, session_.length(i), n_ctx(), event.text);
        if (done[size_t(i)]) {
            event = finished_event(running_[size_t(i)], std::move(event.text));
        } else {
            event.logprobs = s.new_logprobs();
        }
        events.push_back(std::move(event));
    }
    // From the highest slot down, so the request moved into a freed slot is never one that just finished.
    for (int i = n - 1; i >= 0; --i) {
        if (done[size_t(i)]) release(i);
    }
    return events;
}

bool BatchDecoder::cancel(int64_t id) {
    if (pending_ && pending_->request.id == id) {
        drop_pending();
        return true;
    }
    for (int i = 0; i < n_active(); ++i) {
        if (running_[size_t(i)].id == id) {
            release(i);
            return true;
        }
    }
    return false;
}

void BatchDecoder::release(int slot) {
    forget(running_[size_t(slot)].id);
    const int last = n_active() - 1;
    if (slot != last) {
        session_.copy_stream(last, slot);
        mixtures_->move(session_, last, slot);
        running_[size_t(slot)] = std::move(running_[size_t(last)]);
    } else {
        mixtures_->clear(slot);
    }
    session_.clear(last);
    running_.pop_back();
}

}  // namespace logo::core
