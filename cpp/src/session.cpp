#include "session.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend.h"
#include "logo/errors.h"

namespace logo::core {

Session::Session(std::shared_ptr<const Model> model, const SessionOptions & options)
    : model_(std::move(model)),
      cache_(model_->hparams(),
             options.n_ctx > 0 ? options.n_ctx : throw std::invalid_argument("n_ctx must be positive"),
             options.n_seq > 0 ? options.n_seq : throw std::invalid_argument("the number of sequences must be positive"),
             model_->device()),
      n_batch_(options.n_batch),
      arena_(forward_tensor_estimate(model_->hparams())) {
    if (n_batch_ < 1) throw std::invalid_argument("n_batch must be positive");
    ggml_backend_t main = ggml_backend_dev_init(model_->device(), nullptr);
    if (!main) throw std::runtime_error(std::string("cannot start backend ") + ggml_backend_dev_name(model_->device()));
    backends_.push_back(main);
    if (!is_cpu_device(model_->device())) {
        // The CPU backend comes last: the scheduler falls back to it for ops the device lacks.
        ggml_backend_t cpu = ggml_backend_dev_init(cpu_device(), nullptr);
        backends_.push_back(cpu);
    }
    for (ggml_backend_t b : backends_) set_backend_threads(b, model_->n_threads());
    fit_scheduler(2 * forward_tensor_estimate(model_->hparams()));
}

void Session::fit_scheduler(size_t graph_size) {
    if (sched_ && graph_size <= sched_size_) return;
    // The first graphs measured set the size; a quarter more keeps small variations from recreating it.
    const size_t size = std::max(graph_size + graph_size / 4, sched_size_);
    ggml_backend_sched_t sched = ggml_backend_sched_new(backends_.data(), nullptr, int(backends_.size()), size, false, true);
    if (!sched) throw std::runtime_error("cannot create a scheduler for a graph of " + std::to_string(size) + " nodes");
    if (sched_) ggml_backend_sched_free(sched_);
    sched_ = sched;
    sched_size_ = size;
}

Session::~Session() {
    if (sched_) ggml_backend_sched_free(sched_);
    for (ggml_backend_t b : backends_) ggml_backend_free(b);
}

int Session::length(int stream) const {
    if (stream < 0 || stream >= cache_.n_stream) throw std::invalid_argument("sequence index out of range");
    return cache_.length[size_t(stream)];
}

void Session::clear(int stream) {
    length(stream);
    cache_.length[size_t(stream)] = 0;
}

void Session::truncate(int stream, int new_length) {
    if (new_length < 0 || new_length > length(stream)) {
        throw std::invalid_argument("cannot truncate sequence " + std::to_string(stream) + " to " + std::to_string(new_length) +
                                    " tokens: it holds " + std::to_string(length(stream)));
    }
    cache_.length[size_t(stream)] = new_length;
}

void Session::clear_all() { std::fill(cache_.length.begin(), cache_.length.end(), 0); }

void Session::copy_stream(int from, int to) {
    const int n = length(from);
    length(to);
    if (from == to) return;
    if (n > 0) {
        const auto & cache = cache_;
        compute([&](ggml_context * ctx) {
            std::vector<ggml_tensor *> copies;
            // A stream's rows are contiguous: rows [stream * n_ctx, stream * n_ctx + length).
            for (const auto * layer : {&cache.k, &cache.v}) {
                for (ggml_tensor * t : *layer) {
                    graph_reserve(ctx, 8);
                    const size_t row = t->nb[1];
                    ggml_tensor * src = ggml_view_2d(ctx, t, t->ne[0], n, row, row * size_t(from) * size_t(cache.n_ctx));
                    ggml_tensor * dst = ggml_view_2d(ctx, t, t->ne[0], n, row, row * size_t(to) * size_t(cache.n_ctx));
                    copies.push_back(ggml_cpy(ctx, src, dst));
                }
            }
            return copies;
        });
    }
    cache_.length[size_t(to)] = n;
}

void Session::check_tokens(int first_stream, int n_stream, const std::vector<int32_t> & tokens) const {
    if (n_stream < 1 || first_stream < 0 || first_stream + n_stream > cache_.n_stream) {
        throw std::invalid_argument("sequences [" + std::to_string(first_stream) + ", " +
                                    std::to_string(first_stream + n_stream) + ") are outside this session's " +
                                    std::to_string(cache_.n_stream));
    }
    if (tokens.empty()) throw std::invalid_argument("no tokens to evaluate (empty prompt)");
    if (tokens.size() % size_t(n_stream) != 0) {
        throw std::invalid_argument("every sequence in one evaluation must get the same number of tokens");
    }
    const int32_t n_vocab = int32_t(model_->hparams().n_vocab);
    for (int32_t t : tokens) {
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("token id " + std::to_string(t) + " is out of range [0, " +
                                        std::to_string(n_vocab) + ")");
        }
    }
    const int n_per_stream = int(tokens.size() / size_t(n_stream));
    for (int s = first_stream; s < first_stream + n_stream; ++s) {
        const int need = cache_.length[size_t(s)] + n_per_stream;
        if (need > cache_.n_ctx) {
            throw ContextOverflow("context overflow: sequence " + std::to_string(s) + " would hold " +
                                  std::to_string(need) + " tokens but n_ctx is " + std::to_string(cache_.n_ctx));
        }
    }
}

std::vector<float> Session::evaluate(int first_stream, int n_stream, const std::vector<int32_t> & tokens,
                                     bool all_outputs, const LowRankTerms * adapters,
                                     const InterruptCheck & interrupted) {
    check_tokens(first_stream, n_stream, tokens);
    const int n_per_stream = int(tokens.size() / size_t(n_stream));
    const int n_layer = int(model_->hparams().n_layer);
    if (n_stream == 1) {
        std::vector<float> out;
        for (int start = 0; start < n_per_stream; start += n_batch_) {
            if (interrupted && interrupted()) throw Interrupted();
            const int n = std::min(n_batch_, n_per_stream - start);
            const bool last = start + n == n_per_stream;
            if (!all_outputs && !last) {
                run_chunk(first_stream, 1, tokens.data() + start, n, false, adapters, n_layer);
                continue;
            }
            std::vector<float> part = std::move(run_chunk(first_stream, 1, tokens.data() + start, n, all_outputs, adapters, n_layer)[0]);
            out.insert(out.end(), part.begin(), part.end());
        }
        return out;
    }
    if (n_per_stream > n_batch_) {
        throw std::invalid_argument("a joint evaluation of several sequences takes at most n_batch tokens each");
    }
    return std::move(run_chunk(first_stream, n_stream, tokens.data(), n_per_stream, all_outputs, adapters, n_layer)[0]);
}

std::vector<float> Session::block_input(int stream, const std::vector<int32_t> & tokens, int layer,
                                        const LowRankTerms * adapters) {
    GraphTail identity = [](ggml_context *, const std::vector<ggml_tensor *> & h) { return h; };
    return std::move(probe(stream, tokens, {layer}, adapters, identity)[0]);
}

static void check_layers(const std::vector<int> & layers, int n_layer) {
    if (layers.empty()) throw std::invalid_argument("no layers given");
    for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i] < 0 || layers[i] >= n_layer) {
            throw std::invalid_argument("layer " + std::to_string(layers[i]) + " is out of range [0, " +
                                        std::to_string(n_layer) + ")");
        }
        if (i > 0 && layers[i] <= layers[i - 1]) throw std::invalid_argument("layers must be ascending and distinct");
    }
}

std::vector<std::vector<float>> Session::probe(int stream, const std::vector<int32_t> & tokens,
                                               const std::vector<int> & layers, const LowRankTerms * adapters,
                                               const GraphTail & tail, ProbeAt at,
                                               const std::vector<ggml_tensor *> & norm_weights) {
    if (at == ProbeAt::token_mean && norm_weights.size() != layers.size()) {
        throw std::invalid_argument("a token-mean probe needs one norm weight per probed layer");
    }
    check_layers(layers, int(model_->hparams().n_layer));
    check_tokens(stream, 1, tokens);
    const int n = int(tokens.size());
    const int before = cache_.length[size_t(stream)];
    // BOS is left out of a mean (its residual is the same for every prompt), unless it is all there is.
    const bool skip_bos = at == ProbeAt::token_mean && n > 1 && tokens[0] == model_->vocab().bos();
    const size_t n_embd = size_t(model_->hparams().n_embd);
    std::vector<float> carry;  // token sums of the chunks before the last, [layers][n_embd]
    std::vector<std::vector<float>> out;
    try {
        for (int start = 0; start < n; start += n_batch_) {
            const int m = std::min(n_batch_, n - start);
            const bool last = start + m == n;
            Capture capture;
            capture.layers = layers;
            capture.skip_first = skip_bos && start == 0;
            capture.norm_weights = norm_weights;
            if (at == ProbeAt::last_token) {
                // Only the last chunk's graph carries the tail: earlier chunks just fill the cache.
                capture.mode = Capture::last_token;
                out = run_chunk(stream, 1, tokens.data() + start, m, false, adapters, layers.back(),
                                last ? &tail : nullptr, last ? &capture : nullptr);
                continue;
            }
            if (!last) {
                // Earlier chunks return their token sums; the last chunk's graph adds them and divides.
                capture.mode = Capture::token_sum;
                std::vector<std::vector<float>> part =
                    run_chunk(stream, 1, tokens.data() + start, m, false, adapters, layers.back(), nullptr, &capture);
                carry.resize(layers.size() * n_embd, 0.0f);
                for (size_t l = 0; l < layers.size(); ++l) {
                    for (size_t e = 0; e < n_embd; ++e) carry[l * n_embd + e] += part[l + 1][e];
                }
                continue;
            }
            capture.mode = Capture::token_mean;
            capture.carry = carry.empty() ? nullptr : &carry;
            capture.count = n - (skip_bos ? 1 : 0);
            out = run_chunk(stream, 1, tokens.data() + start, m, false, adapters, layers.back(), &tail, &capture);
        }
    } catch (...) {
        cache_.length[size_t(stream)] = before;
        throw;
    }
    cache_.length[size_t(stream)] = before;
    return out;
}

std::vector<std::vector<float>> Session::hidden_states(int stream, const std::vector<int32_t> & tokens,
                                                       const std::vector<int> & layers) {
    check_layers(layers, int(model_->hparams().n_layer));
    check_tokens(stream, 1, tokens);
    const int n = int(tokens.size());
    const int before = cache_.length[size_t(stream)];
    std::vector<std::vector<float>> out(layers.size());
    Capture capture;
    capture.layers = layers;
    try {
        for (int start = 0; start < n; start += n_batch_) {
            const int m = std::min(n_batch_, n - start);
            std::vector<std::vector<float>> part =
                run_chunk(stream, 1, tokens.data() + start, m, false, nullptr, layers.back(), nullptr, &capture);
            // part[0] is the last token's block input; the captured layers (every token) follow.
            for (size_t l = 0; l < layers.size(); ++l) out[l].insert(out[l].end(), part[l + 1].begin(), part[l + 1].end());
        }
    } catch (...) {
        cache_.length[size_t(stream)] = before;
        throw;
    }
    cache_.length[size_t(stream)] = before;
    return out;
}

void Session::compute(const std::function<std::vector<ggml_tensor *>(ggml_context *)> & build) {
    const BuiltGraph built = arena_.build_graph(build);
    fit_scheduler(built.size());
    ggml_backend_sched_reset(sched_);
    const bool ok = ggml_backend_sched_alloc_graph(sched_, built.graph) &&
                    ggml_backend_sched_graph_compute(sched_, built.graph) == GGML_STATUS_SUCCESS;
    ggml_backend_sched_reset(sched_);
    if (!ok) throw std::runtime_error("computation failed (out of memory?)");
}

std::vector<std::vector<float>> Session::run_chunk(int first_stream, int n_stream, const int32_t * tokens,
                                                   int n_per_stream, bool all_outputs, const LowRankTerms * adapters,
                                                   int stop_layer, const GraphTail * tail, const Capture * capture) {
    BatchShape shape;
    shape.first_stream = first_stream;
    shape.n_stream = n_stream;
    shape.n_per_stream = n_per_stream;
    shape.all_outputs = all_outputs;
    int longest = 0;
    for (int s = first_stream; s < first_stream + n_stream; ++s) {
        longest = std::max(longest, cache_.length[size_t(s)] + n_per_stream);
    }
    // Padding the attended span keeps kernels on aligned sizes; padded rows are masked out.
    shape.n_kv = std::min(cache_.n_ctx, GGML_PAD(longest, 32));

    ForwardGraph fg;
    std::vector<ggml_tensor *> results;
    ggml_tensor * carry = nullptr;  // [n_embd, n_layers]: token sums of earlier chunks (token_mean)
    const BuiltGraph built = arena_.build_graph([&](ggml_context * ctx) {
        fg = build_forward_graph(ctx, *model_, cache_, shape, adapters, stop_layer,
                                 capture ? capture->layers : std::vector<int>{});
        results = {fg.logits ? fg.logits : fg.block_input};
        carry = nullptr;
        std::vector<ggml_tensor *> kept;
        if (capture) {
            graph_reserve(ctx, 8);
            if (capture->mode == Capture::token_mean && capture->carry) {
                carry = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, model_->hparams().n_embd, int64_t(capture->layers.size()));
                ggml_set_input(carry);
            }
            for (size_t l = 0; l < fg.captured.size(); ++l) {
                graph_reserve(ctx, 16);
                ggml_tensor * h = fg.captured[l];  // [n_embd, n_tokens]
                switch (capture->mode) {
                    case Capture::all_tokens: break;
                    case Capture::last_token: h = ggml_get_rows(ctx, h, fg.inputs.output_rows); break;
                    case Capture::token_sum:
                    case Capture::token_mean: {
                        // Each token as the module reads it: RMS-normalised, times the module's norm weight.
                        h = ggml_mul(ctx, ggml_rms_norm(ctx, h, model_->hparams().rms_eps), capture->norm_weights[l]);
                        ggml_tensor * first = ggml_view_2d(ctx, h, h->ne[0], 1, h->nb[1], 0);
                        h = ggml_sum_rows(ctx, ggml_cont(ctx, ggml_transpose(ctx, h)));  // [1, n_embd]
                        h = ggml_reshape_2d(ctx, h, h->ne[1], 1);                          // [n_embd, 1]
                        if (capture->skip_first) h = ggml_sub(ctx, h, first);
                        if (capture->mode == Capture::token_sum) break;
                        if (carry) {
                            h = ggml_add(ctx, h, ggml_view_2d(ctx, carry, carry->ne[0], 1, carry->nb[1], l * carry->nb[1]));
                        }
                        h = ggml_scale(ctx, h, 1.0f / float(capture->count));
                        break;
                    }
                }
                kept.push_back(h);
            }
        }
        std::vector<ggml_tensor *> extra;  // outputs beyond the forward graph's own
        if (tail) {
            graph_reserve(ctx, kLayerRoom);
            results = (*tail)(ctx, kept);
            extra = results;
        } else {
            results.insert(results.end(), kept.begin(), kept.end());
            extra = kept;
        }
        for (ggml_tensor * t : extra) {
            ggml_set_output(t);
            fg.outputs.push_back(t);
        }
        return fg.outputs;
    });
    fit_scheduler(built.size());

    ggml_backend_sched_reset(sched_);
    if (!ggml_backend_sched_alloc_graph(sched_, built.graph)) {
        throw std::runtime_error("cannot allocate the compute graph (out of memory?)");
    }

    const int n_tokens = shape.n_tokens();
    std::vector<int32_t> positions(static_cast<size_t>(n_tokens));
    std::vector<int64_t> rows(static_cast<size_t>(n_tokens));
    std::vector<ggml_fp16_t> mask(size_t(shape.n_kv) * size_t(n_tokens));
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), minus_inf = ggml_fp32_to_fp16(-INFINITY);
    for (int j = 0; j < n_stream; ++j) {
        const int s = first_stream + j;
        const int start = cache_.length[size_t(s)];
        for (int t = 0; t < n_per_stream; ++t) {
            const size_t i = size_t(j * n_per_stream + t);
            const int pos = start + t;
            positions[i] = pos;
            rows[i] = int64_t(s) * cache_.n_ctx + pos;
            // Causal: a token sees its own stream's rows up to its own position.
            ggml_fp16_t * m = mask.data() + i * size_t(shape.n_kv);
            for (int c = 0; c < shape.n_kv; ++c) m[c] = c <= pos ? zero : minus_inf;
        }
    }
    // An input the graph does not use (a probe of block 0 attends nothing) has no buffer: skip it.
    auto set_input = [](ggml_tensor * t, const void * data, size_t size) {
        if (t && t->buffer) ggml_backend_tensor_set(t, data, 0, size);
    };
    std::vector<int32_t> out_rows;
    for (int j = 0; j < n_stream; ++j) out_rows.push_back(j * n_per_stream + n_per_stream - 1);
    set_input(fg.inputs.tokens, tokens, sizeof(int32_t) * size_t(n_tokens));
    set_input(fg.inputs.positions, positions.data(), sizeof(int32_t) * positions.size());
    set_input(fg.inputs.cache_rows, rows.data(), sizeof(int64_t) * rows.size());
    set_input(fg.inputs.mask, mask.data(), sizeof(ggml_fp16_t) * mask.size());
    set_input(fg.inputs.output_rows, out_rows.data(), sizeof(int32_t) * out_rows.size());
    if (carry) set_input(carry, capture->carry->data(), sizeof(float) * capture->carry->size());

    if (ggml_backend_sched_graph_compute(sched_, built.graph) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("graph computation failed");
    }
    for (int s = first_stream; s < first_stream + n_stream; ++s) cache_.length[size_t(s)] += n_per_stream;

    std::vector<std::vector<float>> out;
    for (ggml_tensor * t : results) {
        out.emplace_back(static_cast<size_t>(ggml_nelements(t)));
        ggml_backend_tensor_get(t, out.back().data(), 0, ggml_nbytes(t));
    }
    return out;
}

}  // namespace logo::core
