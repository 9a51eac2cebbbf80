// The public ContinuousBatch (logo/batch.h) over core::BatchDecoder: locking and argument conversion.
#include "api_internal.h"
#include "batch_decoder.h"
#include "logo/batch.h"

namespace logo {

struct ContinuousBatch::Guard {
    std::mutex mutex;
};

ContinuousBatch::ContinuousBatch(const Model & model, const ContextParams & params, const AdapterPool * pool,
                                 SlotLayout layout)
    : model_(model.impl_), guard_(std::make_unique<Guard>()) {
    std::vector<const core::Adapter *> adapters;
    std::shared_lock<std::shared_mutex> lock;
    if (pool) {
        if (&pool->impl_->pool.model() != model_.get()) throw std::invalid_argument("the adapter pool belongs to another model");
        lock = std::shared_lock<std::shared_mutex>(pool->impl_->mutex);
        for (size_t i = 0; i < pool->impl_->pool.size(); ++i) adapters.push_back(&pool->impl_->pool.at(i));
    }
    const core::SlotLayout core_layout = layout == SlotLayout::stacked  ? core::SlotLayout::stacked
                                         : layout == SlotLayout::pooled ? core::SlotLayout::pooled
                                                                        : core::SlotLayout::automatic;
    decoder_ = std::make_unique<core::BatchDecoder>(model_, params, adapters, core_layout);
}

SlotLayout ContinuousBatch::layout() const {
    return decoder_->layout() == core::SlotLayout::pooled ? SlotLayout::pooled : SlotLayout::stacked;
}

ContinuousBatch::~ContinuousBatch() = default;

int ContinuousBatch::n_slots() const { return decoder_->n_slots(); }
int ContinuousBatch::n_active() const { return decoder_->n_active(); }
int ContinuousBatch::n_ctx() const { return decoder_->n_ctx(); }

std::vector<int64_t> ContinuousBatch::active() const { return decoder_->active_ids(); }

namespace {

void check_fold(const GenerateOptions & options) {
    if (options.fold != FoldMode::exact) {
        throw std::invalid_argument(std::string("fold = ") + to_string(options.fold) + " is not available in a "
                                    "ContinuousBatch: its slots share the base weights (use fold = exact)");
    }
}

}  // namespace

// Runs `go(selection)` with `mixture` over `pool` converted (and the pool's lock held while the slot copies it).
template <typename Go>
auto ContinuousBatch::with_selection(const AdapterPool * pool, const Mixture & mixture, Go go) const {
    if (mixture.empty()) return go(core::Selection{});
    if (!pool) throw std::invalid_argument("a mixture needs the AdapterPool its indices refer to");
    if (&pool->impl_->pool.model() != model_.get()) {
        throw std::invalid_argument("the adapter pool belongs to another model");
    }
    // The slot keeps a copy of the mixture, so the lock is needed only while it is written.
    std::shared_lock<std::shared_mutex> lock(pool->impl_->mutex);
    return go(to_selection(pool->impl_->pool, mixture));
}

RequestEvent ContinuousBatch::start(int64_t id, const std::vector<Token> & prompt, const GenerateOptions & options,
                                    const AdapterPool * pool, const Mixture & mixture) {
    Entered entered(guard_->mutex, "ContinuousBatch");
    check_fold(options);
    return with_selection(pool, mixture, [&](const core::Selection & selection) {
        return decoder_->start(id, prompt, options, selection);
    });
}

std::optional<RequestEvent> ContinuousBatch::begin(int64_t id, const std::vector<Token> & prompt,
                                                   const GenerateOptions & options, const AdapterPool * pool,
                                                   const Mixture & mixture) {
    Entered entered(guard_->mutex, "ContinuousBatch");
    check_fold(options);
    return with_selection(pool, mixture, [&](const core::Selection & selection) {
        return decoder_->begin(id, prompt, options, selection);
    });
}

bool ContinuousBatch::prefilling() const { return decoder_->prefilling(); }
int ContinuousBatch::prefill_chunk() const { return decoder_->prefill_chunk(); }

void ContinuousBatch::set_prefill_chunk(int n_tokens) {
    Entered entered(guard_->mutex, "ContinuousBatch");
    decoder_->set_prefill_chunk(n_tokens);
}

std::vector<RequestEvent> ContinuousBatch::step() {
    Entered entered(guard_->mutex, "ContinuousBatch");
    return decoder_->step();
}

bool ContinuousBatch::cancel(int64_t id) {
    Entered entered(guard_->mutex, "ContinuousBatch");
    return decoder_->cancel(id);
}

// No Entered guard: abort is meant to be called while another thread is inside start() or step(); the
// decoder keeps what it touches under its own mutex.
bool ContinuousBatch::abort(int64_t id) { return decoder_->abort(id); }

}  // namespace logo
