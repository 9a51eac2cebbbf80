// The public API (logo/logo.h) over the core classes: argument checks, locking, and conversions.
#include <cmath>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>

#include "adapter_pool.h"
#include "api_internal.h"
#include "backend.h"
#include "calibration.h"
#include "calibration_prompts.h"
#include "generate.h"
#include "gguf_file.h"
#include "logo/logo.h"
#include "mixture.h"
#include "model.h"
#include "router.h"
#include "session.h"

namespace logo {

namespace {

// Below this many new tokens, folding a mixture into the weights costs more than it saves.
constexpr int kFoldMinTokens = 16;

void check_fold(FoldMode fold) {
    GenerateOptions o;
    o.fold = fold;
    o.validate();
}

core::FoldKind fold_kind(FoldMode fold) {
    switch (fold) {
        case FoldMode::requantize: return core::FoldKind::requantize;
        case FoldMode::requantize_stochastic: return core::FoldKind::requantize_stochastic;
        case FoldMode::upcast: return core::FoldKind::upcast;
        default: return core::FoldKind::float_only;
    }
}

}  // namespace

// -- Model ---------------------------------------------------------------------------------------

Model::Model(const std::string & path, const ModelParams & params) {
    core::ModelOptions o;
    o.device = params.device;
    o.n_threads = params.n_threads;
    o.use_mmap = params.use_mmap;
    o.repack = params.repack;
    impl_ = std::make_shared<core::Model>(path, o);
    const core::ModelHparams & hp = impl_->hparams();
    info_.path = path;
    info_.arch = hp.arch_name;
    info_.device = ggml_backend_dev_name(impl_->device());
    info_.n_vocab = hp.n_vocab;
    info_.n_embd = hp.n_embd;
    info_.n_layer = hp.n_layer;
    info_.n_head = hp.n_head;
    info_.n_head_kv = hp.n_head_kv;
    info_.n_ff = hp.n_ff;
    info_.n_ctx_train = hp.n_ctx_train;
    info_.n_threads = impl_->n_threads();
    info_.weight_bytes = impl_->weight_bytes();
    info_.bos = impl_->vocab().bos();
    info_.eos = impl_->vocab().eos();
}

Model::~Model() = default;

std::vector<Token> Model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    return impl_->vocab().tokenize(text, add_special, parse_special);
}

std::string Model::detokenize(const std::vector<Token> & tokens, bool remove_special, bool unparse_special) const {
    return impl_->vocab().detokenize(tokens, remove_special, unparse_special);
}

std::string Model::token_piece(Token token) const {
    if (token < 0 || token >= info_.n_vocab) {
        throw std::invalid_argument("token id " + std::to_string(token) + " is out of range [0, " + std::to_string(info_.n_vocab) + ")");
    }
    return impl_->vocab().token_piece(token, true);
}

bool Model::is_end_of_generation(Token token) const { return impl_->vocab().is_end_of_generation(token); }

std::string Model::apply_chat_template(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                       const std::string & chat_template) const {
    if (messages.empty()) throw std::invalid_argument("messages is empty");
    return impl_->vocab().apply_chat_template(messages, add_generation_prompt, chat_template);
}

std::vector<Token> Model::chat_tokens(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                      const std::string & chat_template, bool add_special, int64_t limit) const {
    if (messages.empty()) throw std::invalid_argument("messages is empty");
    return impl_->vocab().chat_tokens(messages, add_generation_prompt, chat_template, add_special, limit);
}

size_t Model::calibration_cache_entries() const { return impl_->calibration_cache().n_cached_stats(); }

namespace {

core::RawSignal raw_signal_of(Signal signal) {
    switch (signal) {
        case Signal::norm: return core::RawSignal::norm;
        case Signal::entropy: return core::RawSignal::inverse_entropy;
        case Signal::arrow: return core::RawSignal::arrow;
    }
    throw std::invalid_argument("unknown signal in a calibration statistic");
}

// False for a raw signal with no public name (none today): such statistics are not exported.
bool signal_of(core::RawSignal kind, Signal & out) {
    switch (kind) {
        case core::RawSignal::norm: out = Signal::norm; return true;
        case core::RawSignal::inverse_entropy: out = Signal::entropy; return true;
        case core::RawSignal::arrow: out = Signal::arrow; return true;
    }
    return false;
}

}  // namespace

std::vector<CalibrationStat> Model::calibration_stats() const {
    std::vector<CalibrationStat> out;
    for (const auto & [key, s] : impl_->calibration_cache().entries()) {
        Signal signal;
        if (signal_of(key.kind, signal)) out.push_back({key.matrix, signal, key.position, key.squared, s.mean, s.std});
    }
    return out;
}

std::string Model::calibration_identity() const { return core::calibration_identity(*impl_); }

void Model::add_calibration_stats(const std::vector<CalibrationStat> & stats) const {
    std::vector<std::pair<core::StatsKey, core::SignalStats>> entries;
    for (size_t i = 0; i < stats.size(); ++i) {
        const CalibrationStat & c = stats[i];
        if (!std::isfinite(c.mean) || !std::isfinite(c.std) || c.std < 0) {
            throw std::invalid_argument("calibration statistic " + std::to_string(i) + ": mean and std must be finite "
                                        "and std >= 0, got mean " + std::to_string(c.mean) + ", std " +
                                        std::to_string(c.std));
        }
        if (c.position != ProbePosition::last && c.position != ProbePosition::mean) {
            throw std::invalid_argument("calibration statistic " + std::to_string(i) + ": unknown probe position");
        }
        entries.push_back({{c.matrix, raw_signal_of(c.signal), c.position, c.squared}, {c.mean, c.std}});
    }
    impl_->calibration_cache().insert(entries);
}

std::vector<std::string> Model::available_devices() { return core::available_devices(); }
int Model::default_thread_count() { return core::default_thread_count(); }

// -- AdapterPool ---------------------------------------------------------------------------------

AdapterPool::AdapterPool(const Model & model) : impl_(std::make_unique<Impl>(model.impl_)) {}
AdapterPool::~AdapterPool() = default;

std::vector<std::string> AdapterPool::add(const std::vector<std::string> & paths, const std::vector<std::string> & names) {
    std::unique_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.add(paths, names);
}

std::vector<std::string> AdapterPool::add_tensors(const std::vector<AdapterData> & adapters) {
    std::unique_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.add_tensors(adapters);
}

void AdapterPool::remove(const std::string & name) {
    std::unique_lock<std::shared_mutex> lock(impl_->mutex);
    impl_->pool.remove(name);
}

std::vector<std::string> AdapterPool::names() const {
    std::shared_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.names();
}

int AdapterPool::index_of(const std::string & name) const {
    std::shared_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.index_of(name);
}

size_t AdapterPool::size() const {
    std::shared_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.size();
}

size_t AdapterPool::bytes() const {
    std::shared_lock<std::shared_mutex> lock(impl_->mutex);
    return impl_->pool.bytes();
}

AdapterInfo AdapterPool::info(size_t index) const {
    std::shared_lock<std::shared_mutex> lock(impl_->mutex);
    if (index >= impl_->pool.size()) throw std::invalid_argument("adapter index out of range");
    const core::Adapter & a = impl_->pool.at(index);
    AdapterInfo info;
    info.name = a.name;
    info.path = a.path;
    info.alpha = a.alpha;
    info.bytes = a.bytes;
    for (const auto & m : a.matrices) {
        info.matrices.push_back({m.weight_name, m.layer, m.module, m.rank, m.scale, ggml_type_name(m.a->type),
                                 ggml_type_name(m.b->type)});
    }
    return info;
}

std::vector<std::string> calibration_prompts() { return core::calibration_prompts(); }

void check_gguf_file(const std::string & path) { core::GgufFile file(path); }

std::vector<std::pair<std::string, float>> describe(const Routing & routing, const AdapterPool & pool) {
    const std::vector<std::string> names = pool.names();
    std::vector<std::pair<std::string, float>> out;
    for (size_t i = 0; i < routing.selected.size(); ++i) {
        out.push_back({names.at(size_t(routing.selected[i])), routing.weights[i]});
    }
    return out;
}

// -- shared by the API's files ---------------------------------------------------------------------

Entered::Entered(std::mutex & m, const char * what) : lock_(m, std::try_to_lock) {
    if (!lock_.owns_lock()) {
        throw ConcurrentUse(std::string("this ") + what + " is in use by another thread; give each thread its own " +
                            what + " (a Model and an AdapterPool can be shared)");
    }
}

core::Selection to_selection(const core::AdapterPool & pool, const Mixture & mixture) {
    core::Selection selection;
    for (const auto & [index, weight] : mixture) {
        if (index < 0 || size_t(index) >= pool.size()) {
            throw std::invalid_argument("adapter index " + std::to_string(index) + " is out of range for a pool of " +
                                        std::to_string(pool.size()));
        }
        if (!(std::fabs(weight) <= kMaxMixtureWeight)) {  // NaN fails it too
            throw std::invalid_argument("the weight of adapter '" + pool.at(size_t(index)).name + "' is " +
                                        std::to_string(weight) + "; a mixture weight must be a finite number in [-" +
                                        std::to_string(int(kMaxMixtureWeight)) + ", " + std::to_string(int(kMaxMixtureWeight)) +
                                        "] (logo::kMaxMixtureWeight: a larger one overflows F16 in the pair's product)");
        }
        selection.push_back({&pool.at(size_t(index)), weight});
    }
    return selection;
}

// -- Context -------------------------------------------------------------------------------------

// Detects a Context used from two threads at once, which would corrupt its cache.
struct Context::Guard {
    std::mutex mutex;
};

namespace {

std::unique_ptr<core::Mixture> make_mixture(const core::Model & model, const core::AdapterPool & pool,
                                            const std::vector<Mixture> & mixtures, int n_seq, bool exact_pair = false) {
    if (mixtures.size() != 1 && int(mixtures.size()) != n_seq) {
        throw std::invalid_argument("give one adapter mixture for all sequences or one per sequence of the context (" +
                                    std::to_string(n_seq) + "), not " + std::to_string(mixtures.size()));
    }
    std::vector<core::Selection> per_sequence;
    for (const Mixture & mixture : mixtures) per_sequence.push_back(to_selection(pool, mixture));
    return std::make_unique<core::Mixture>(model, per_sequence, exact_pair);
}

// The mixture of a generation or evaluation with `fold`, folded where it asks: requantize and upcast fold one
// mixture on any base (checked before any ggml call); exact folds a long single generation over float weights.
std::unique_ptr<core::Mixture> folded_mixture(core::Session & session, const core::Model & model,
                                              const core::AdapterPool & pool, const std::vector<Mixture> & mixtures,
                                              FoldMode fold, bool long_single) {
    if (fold != FoldMode::exact && mixtures.size() != 1) {
        throw std::invalid_argument(std::string("fold = ") + to_string(fold) + " folds one mixture into the weights, "
                                    "shared by every sequence; got " + std::to_string(mixtures.size()) +
                                    " mixtures (use fold = exact for them)");
    }
    auto mixture = make_mixture(model, pool, mixtures, session.n_stream(), fold != FoldMode::exact);
    if (fold != FoldMode::exact) {
        mixture->fold(session, fold_kind(fold));
    } else if (long_single && mixture->foldable(model)) {
        // One long generation: fold the mixture into the weights so decoding costs what the base model costs.
        mixture->fold(session);
    }
    return mixture;
}

}  // namespace

Context::Context(const Model & model, const ContextParams & params)
    : model_(model.impl_), guard_(std::make_unique<Guard>()) {
    session_ = std::make_unique<core::Session>(model_, params);
}

Context::~Context() = default;

int Context::n_ctx() const { return session_->n_ctx(); }
int Context::n_seq() const { return session_->n_stream(); }
int64_t Context::n_vocab() const { return model_->hparams().n_vocab; }
int Context::length(int seq) const { return session_->length(seq); }

void Context::clear(int seq) {
    Entered entered(guard_->mutex, "Context");
    session_->clear(seq);
}

void Context::clear_all() {
    Entered entered(guard_->mutex, "Context");
    session_->clear_all();
}

void Context::truncate(int seq, int length) {
    Entered entered(guard_->mutex, "Context");
    session_->truncate(seq, length);
}

std::vector<float> Context::evaluate(int first_seq, int n_seq, const std::vector<Token> & tokens, bool all_logits,
                                     const AdapterPool * pool, const std::vector<Mixture> & mixtures, FoldMode fold) {
    Entered entered(guard_->mutex, "Context");
    check_fold(fold);
    if (!pool || mixtures.empty()) return session_->evaluate(first_seq, n_seq, tokens, all_logits, nullptr);
    std::shared_lock<std::shared_mutex> lock(pool->impl_->mutex);
    auto mixture = folded_mixture(*session_, *model_, pool->impl_->pool, mixtures, fold, false);
    return session_->evaluate(first_seq, n_seq, tokens, all_logits, &mixture->terms());
}

std::vector<float> Context::block_input(int seq, const std::vector<Token> & tokens, int layer) {
    Entered entered(guard_->mutex, "Context");
    return session_->block_input(seq, tokens, layer, nullptr);
}

std::vector<std::vector<float>> Context::hidden_states(int seq, const std::vector<Token> & tokens,
                                                      const std::vector<int> & layers) {
    Entered entered(guard_->mutex, "Context");
    return session_->hidden_states(seq, tokens, layers);
}

std::vector<Completion> Context::generate(const std::vector<std::vector<Token>> & prompts, const GenerateOptions & options,
                                          const AdapterPool * pool, const std::vector<Mixture> & mixtures,
                                          const TextCallback & on_text) {
    Entered entered(guard_->mutex, "Context");
    options.validate();
    std::vector<GenerateOptions> per_prompt;
    for (size_t i = 0; i < prompts.size(); ++i) {
        per_prompt.push_back(options);
        per_prompt.back().sampling.seed = options.sampling.seed + i;  // a batch is not n copies of one stream
    }
    if (!pool || mixtures.empty()) return core::generate(*session_, prompts, per_prompt, nullptr, on_text);
    std::shared_lock<std::shared_mutex> lock(pool->impl_->mutex);
    auto mixture = folded_mixture(*session_, *model_, pool->impl_->pool, mixtures, options.fold,
                                  prompts.size() == 1 && options.max_tokens >= kFoldMinTokens);
    return core::generate(*session_, prompts, per_prompt, &mixture->terms(), on_text);
}

std::vector<FoldedWeight> Context::folded_weights(const AdapterPool & pool, const Mixture & mixture, FoldMode fold) {
    Entered entered(guard_->mutex, "Context");
    check_fold(fold);
    std::shared_lock<std::shared_mutex> lock(pool.impl_->mutex);
    auto folded = make_mixture(*model_, pool.impl_->pool, {mixture}, session_->n_stream(), fold != FoldMode::exact);
    if (fold == FoldMode::exact && !folded->terms().empty() && !folded->foldable(*model_)) {
        throw std::invalid_argument("fold = exact folds only into F32, F16 or BF16 weights; this mixture adapts quantized "
                                    "weights (fold = upcast or requantize folds them, lossily)");
    }
    std::vector<FoldedWeight> out;
    folded->fold(*session_, fold_kind(fold), &out);
    return out;
}

Routing Context::route(int seq, const AdapterPool & pool, const std::vector<Token> & tokens, const RouterOptions & options) {
    Entered entered(guard_->mutex, "Context");
    std::shared_lock<std::shared_mutex> lock(pool.impl_->mutex);
    return core::route(*session_, seq, pool.impl_->pool, tokens, options);
}

// -- Router --------------------------------------------------------------------------------------

Router::Router(Context & context, const AdapterPool & pool, const RouterOptions & options)
    : context_(context), pool_(pool), options_(options) {
    if (options.k < 1) throw std::invalid_argument("k must be >= 1, got " + std::to_string(options.k));
}

Routing Router::route(const std::vector<Token> & prompt) { return context_.route(0, pool_, prompt, options_); }

std::pair<Completion, Routing> Router::generate(const std::vector<Token> & prompt, const GenerateOptions & options,
                                                const TextCallback & on_text) {
    Routing routing = route(prompt);
    Mixture mixture;
    for (size_t i = 0; i < routing.selected.size(); ++i) mixture.push_back({routing.selected[i], routing.weights[i]});
    std::vector<Completion> out = context_.generate({prompt}, options, &pool_, {mixture}, on_text);
    return {std::move(out.at(0)), std::move(routing)};
}

}  // namespace logo
