// Adapter loading and pool validation against a base: the input is a LoRA GGUF file, added to a pool over
// one of the base models in LOGO_FUZZ_BASES (':'-separated; the input's size picks one). An adapter that
// loads is then used: a mixture evaluation, a batch of two differing mixtures, and LoGo probes with the
// base and with every adapter active.
#include "common.h"

namespace {

struct Base {
    std::unique_ptr<logo::Model> model;
    std::unique_ptr<logo::AdapterPool> pool;  // one resident adapter, so mixtures combine two
    std::unique_ptr<logo::Context> context;
};

std::vector<Base> & bases() {
    static std::vector<Base> all;
    return all;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    fuzz::quiet_logs();
    const std::vector<std::string> models = fuzz::split(fuzz::env("LOGO_FUZZ_BASES"), ':');
    const std::vector<std::string> resident = fuzz::split(fuzz::env("LOGO_FUZZ_RESIDENT"), ':');
    if (resident.size() != models.size()) {
        std::fprintf(stderr, "LOGO_FUZZ_RESIDENT needs one adapter per base in LOGO_FUZZ_BASES\n");
        std::exit(2);
    }
    for (size_t i = 0; i < models.size(); ++i) {
        Base b;
        b.model = std::make_unique<logo::Model>(models[i], fuzz::cpu_params());
        b.pool = std::make_unique<logo::AdapterPool>(*b.model);
        b.pool->add({resident[i]}, {"resident"});
        b.context = std::make_unique<logo::Context>(*b.model, logo::ContextParams{16, 2, 8});
        bases().push_back(std::move(b));
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    Base & base = bases()[size % bases().size()];
    const std::string & path = fuzz::write_input(data, size);
    try {
        base.pool->add({path}, {"input"});
    } catch (const std::exception &) {
        if (base.pool->size() != 1) std::abort();  // a failed load must leave the pool as it was
        return 0;
    }
    try {
        const std::vector<logo::Token> tokens = {1, 5, 9};
        const logo::Mixture both = {{0, 0.5f}, {1, 0.5f}};
        const logo::Mixture input = {{1, 1.0f}};
        base.context->clear_all();
        base.context->evaluate(0, 1, tokens, true, base.pool.get(), {both});
        base.context->clear_all();
        logo::GenerateOptions options;
        options.max_tokens = 2;
        options.sampling.temperature = 0.0f;
        base.context->generate({tokens, {1, 7}}, options, base.pool.get(), {input, both});
        for (logo::ProbeMode probe : {logo::ProbeMode::base, logo::ProbeMode::all}) {
            logo::RouterOptions router;
            router.k = 2;
            router.probe = probe;
            try {
                base.context->route(0, *base.pool, tokens, router);
            } catch (const std::invalid_argument &) {
                // no adapter adapts the probed module
            }
        }
    } catch (const std::exception &) {
        base.pool->remove("input");
        throw;  // a loaded adapter that cannot be used is a finding
    }
    base.pool->remove("input");
    return 0;
}
