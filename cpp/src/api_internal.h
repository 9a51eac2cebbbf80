// Definitions the public API's implementation files share (api.cpp, api_batch.cpp).
#pragma once

#include <mutex>
#include <shared_mutex>

#include "adapter_pool.h"
#include "logo/logo.h"
#include "mixture.h"

namespace logo {

struct AdapterPool::Impl {
    core::AdapterPool pool;
    // Readers (routing, mixtures) share; add/remove wait for them to finish.
    mutable std::shared_mutex mutex;
    explicit Impl(std::shared_ptr<const core::Model> model) : pool(std::move(model)) {}
};

// Detects an object that belongs to one thread at a time (Context, ContinuousBatch) used from two at
// once, which would corrupt its cache: throws ConcurrentUse naming `what`.
class Entered {
public:
    Entered(std::mutex & m, const char * what);

private:
    std::unique_lock<std::mutex> lock_;
};

// A public Mixture (pool index, weight) as the core's selection; throws invalid_argument for an index
// outside the pool or a weight that is not finite. The caller holds the pool's lock.
core::Selection to_selection(const core::AdapterPool & pool, const Mixture & mixture);

}  // namespace logo
