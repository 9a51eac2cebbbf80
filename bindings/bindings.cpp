// The Python face of the runtime: a thin layer over the public C++ API (logo/logo.h), with type
// conversions, keyword arguments and exception translation. logo_cpp/ (Python) adds dataclasses,
// streaming and the CLI.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "convert.h"
#include "logo/logo.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Float results leave C++ as numpy arrays that own their vector, without a copy.
nb::ndarray<nb::numpy, float, nb::ndim<2>> as_matrix(std::vector<float> && values, size_t cols) {
    auto * owned = new std::vector<float>(std::move(values));
    nb::capsule owner(owned, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
    const size_t rows = cols ? owned->size() / cols : 0;
    return nb::ndarray<nb::numpy, float, nb::ndim<2>>(owned->data(), {rows, cols}, owner);
}

nb::ndarray<nb::numpy, float, nb::ndim<1>> as_vector(std::vector<float> && values) {
    auto * owned = new std::vector<float>(std::move(values));
    nb::capsule owner(owned, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
    return nb::ndarray<nb::numpy, float, nb::ndim<1>>(owned->data(), {owned->size()}, owner);
}

// Text enters as bytes, passed on unchanged (invalid UTF-8 and NUL included, as llama.cpp takes it);
// the Python layer turns str into bytes and says what it does with lone surrogates.
std::string from_bytes(const nb::bytes & b) { return std::string(b.c_str(), b.size()); }

std::vector<std::string> from_bytes(const std::vector<nb::bytes> & list) {
    std::vector<std::string> out;
    for (const auto & b : list) out.push_back(from_bytes(b));
    return out;
}

// GenerateOptions::fold by name; the Python layer checks first and raises ValueError naming the choices.
logo::FoldMode fold_mode(const std::string & name) {
    if (name == "exact") return logo::FoldMode::exact;
    if (name == "requantize") return logo::FoldMode::requantize;
    if (name == "requantize-stochastic") return logo::FoldMode::requantize_stochastic;
    if (name == "upcast") return logo::FoldMode::upcast;
    throw std::invalid_argument("fold must be 'exact', 'requantize', 'requantize-stochastic' or 'upcast', got '" + name +
                                "'");
}

logo::RouterOptions router_options(int k, const std::string & signal, const std::string & probe,
                                   const std::vector<int> & layers, const std::string & module,
                                   const std::string & calibration, const std::string & position,
                                   const std::string & fallback_module, const std::string & weighting,
                                   float temperature) {
    logo::RouterOptions o;
    o.k = k;
    if (signal == "norm") o.signal = logo::Signal::norm;
    else if (signal == "entropy") o.signal = logo::Signal::entropy;
    else if (signal == "arrow") o.signal = logo::Signal::arrow;
    else throw std::invalid_argument("unknown signal '" + signal + "'; use 'norm', 'entropy' or 'arrow'");
    if (probe == "base") o.probe = logo::ProbeMode::base;
    else if (probe == "all") o.probe = logo::ProbeMode::all;
    else throw std::invalid_argument("unknown probe '" + probe + "'; use 'base' or 'all'");
    if (calibration == "none") o.calibration = logo::Calibration::none;
    else if (calibration == "zscore") o.calibration = logo::Calibration::zscore;
    else if (calibration == "zscore_sq") o.calibration = logo::Calibration::zscore_sq;
    else if (calibration == "spectral") o.calibration = logo::Calibration::spectral;
    else if (calibration == "frobenius") o.calibration = logo::Calibration::frobenius;
    else throw std::invalid_argument("unknown calibration '" + calibration + "'; use 'none', 'zscore', 'zscore_sq', 'spectral' or 'frobenius'");
    if (position == "last") o.position = logo::ProbePosition::last;
    else if (position == "mean") o.position = logo::ProbePosition::mean;
    else throw std::invalid_argument("unknown probe position '" + position + "'; use 'last' or 'mean'");
    if (weighting == "signal") o.weighting = logo::MixtureWeighting::signal;
    else if (weighting == "softmax") o.weighting = logo::MixtureWeighting::softmax;
    else throw std::invalid_argument("unknown weighting '" + weighting + "'; use 'signal' or 'softmax'");
    o.temperature = temperature;
    if (layers.empty()) throw std::invalid_argument("layers is empty");
    o.layers = layers;
    o.layer = layers.back();
    o.module = module;
    o.fallback_module = fallback_module;
    return o;
}

// One matrix of an adapter from memory, as Python passes it: (weight, A, B, scale, type, a_name, b_name).
using Matrix2D = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using MatrixTuple = std::tuple<std::string, Matrix2D, Matrix2D, float, std::string, std::string, std::string>;
using AdapterTuple = std::tuple<std::string, std::string, float, std::vector<MatrixTuple>>;

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "logo-cpp runtime core (C++ on ggml): a thin layer over logo/logo.h";

    nb::exception<logo::FormatError>(m, "FormatError", PyExc_ValueError);
    nb::exception<logo::ContextOverflow>(m, "ContextOverflowError", PyExc_ValueError);
    nb::exception<logo::ConcurrentUse>(m, "ConcurrentUseError", PyExc_RuntimeError);
    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        try {
            std::rethrow_exception(p);
        } catch (const logo::FileNotFound & e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        } catch (const logo::FileError & e) {
            PyErr_SetString(PyExc_OSError, e.what());
        }
    });

    m.def("available_devices", &logo::Model::available_devices, "Devices offered by the linked ggml, e.g. ['CPU'].");
    m.def("default_thread_count", &logo::Model::default_thread_count);
    m.def("calibration_prompts", &logo::calibration_prompts,
          "The generic, unlabeled prompts calibrated LoGo signals are normalised over (list of str).");
    m.def("check_gguf_file", &logo::check_gguf_file, "path"_a, nb::call_guard<nb::gil_scoped_release>(),
          "Reads a GGUF file's header: FormatError naming the file and the version or the truncated tensor "
          "(bytes needed vs present) unless the loaders can read it; says nothing of what it holds.");

    nb::class_<logo::Model>(m, "Model")
        .def("__init__",
             [](logo::Model * self, const std::string & path, const std::string & device, int n_threads, bool use_mmap,
                bool repack) {
                 logo::ModelParams p;
                 p.device = device;
                 p.n_threads = n_threads;
                 p.use_mmap = use_mmap;
                 p.repack = repack;
                 nb::gil_scoped_release release;
                 new (self) logo::Model(path, p);
             },
             "path"_a, "device"_a = "auto", "n_threads"_a = 0, "use_mmap"_a = true, "repack"_a = true)
        .def_prop_ro("path", [](const logo::Model & m) { return m.info().path; })
        .def_prop_ro("arch", [](const logo::Model & m) { return m.info().arch; })
        .def_prop_ro("n_vocab", [](const logo::Model & m) { return m.info().n_vocab; })
        .def_prop_ro("n_embd", [](const logo::Model & m) { return m.info().n_embd; })
        .def_prop_ro("n_layer", [](const logo::Model & m) { return m.info().n_layer; })
        .def_prop_ro("n_head", [](const logo::Model & m) { return m.info().n_head; })
        .def_prop_ro("n_head_kv", [](const logo::Model & m) { return m.info().n_head_kv; })
        .def_prop_ro("n_ff", [](const logo::Model & m) { return m.info().n_ff; })
        .def_prop_ro("n_ctx_train", [](const logo::Model & m) { return m.info().n_ctx_train; })
        .def_prop_ro("device", [](const logo::Model & m) { return m.info().device; })
        .def_prop_ro("n_threads", [](const logo::Model & m) { return m.info().n_threads; })
        .def_prop_ro("weight_bytes", [](const logo::Model & m) { return m.info().weight_bytes; })
        .def_prop_ro("calibration_cache_entries", &logo::Model::calibration_cache_entries)
        .def_prop_ro("calibration_identity", &logo::Model::calibration_identity)
        .def("calibration_stats",
             [](const logo::Model & m) {
                 std::vector<std::tuple<uint64_t, std::string, std::string, bool, double, double>> out;
                 for (const logo::CalibrationStat & c : m.calibration_stats()) {
                     out.emplace_back(c.matrix, logo::to_string(c.signal), logo::to_string(c.position), c.squared,
                                      c.mean, c.std);
                 }
                 return out;
             },
             "Every calibration statistic held: [(matrix hash, signal, position, squared, mean, std)].")
        .def("add_calibration_stats",
             [](const logo::Model & m,
                const std::vector<std::tuple<uint64_t, std::string, std::string, bool, double, double>> & stats) {
                 std::vector<logo::CalibrationStat> in;
                 for (const auto & [matrix, signal, position, squared, mean, std] : stats) {
                     logo::CalibrationStat c;
                     c.matrix = matrix;
                     if (signal == "norm") c.signal = logo::Signal::norm;
                     else if (signal == "entropy") c.signal = logo::Signal::entropy;
                     else if (signal == "arrow") c.signal = logo::Signal::arrow;
                     else throw std::invalid_argument("unknown signal '" + signal + "' in a calibration statistic; use norm, entropy or arrow");
                     if (position == "last") c.position = logo::ProbePosition::last;
                     else if (position == "mean") c.position = logo::ProbePosition::mean;
                     else throw std::invalid_argument("unknown position '" + position + "' in a calibration statistic; use last or mean");
                     c.squared = squared;
                     c.mean = mean;
                     c.std = std;
                     in.push_back(c);
                 }
                 m.add_calibration_stats(in);
             },
             "stats"_a, "Statistics saved earlier under this model's calibration_identity (all or none; ValueError "
             "for a bad signal/position, a non-finite mean or std, a negative std); held ones keep their value.")
        .def_prop_ro("bos", [](const logo::Model & m) { return m.info().bos; })
        .def_prop_ro("eos", [](const logo::Model & m) { return m.info().eos; })
        .def("tokenize",
             [](const logo::Model & m, const nb::bytes & text, bool add_special, bool parse_special) {
                 std::string s = from_bytes(text);
                 // Megabytes of text take seconds: other Python threads (the server's event loop) run meanwhile.
                 // libllama's tokenizer only reads the vocabulary, so concurrent calls are safe.
                 nb::gil_scoped_release release;
                 return m.tokenize(s, add_special, parse_special);
             },
             "text"_a, "add_special"_a = true, "parse_special"_a = false)
        .def("detokenize",
             [](const logo::Model & m, const std::vector<int32_t> & tokens, bool remove_special, bool unparse_special) {
                 return as_bytes(m.detokenize(tokens, remove_special, unparse_special));
             },
             "tokens"_a, "remove_special"_a = false, "unparse_special"_a = false)
        .def("token_piece", [](const logo::Model & m, int32_t t) { return as_bytes(m.token_piece(t)); }, "token"_a)
        .def("is_end_of_generation", &logo::Model::is_end_of_generation, "token"_a)
        .def("apply_chat_template",
             [](const logo::Model & m, const std::vector<std::pair<nb::bytes, nb::bytes>> & messages,
                bool add_generation_prompt, const nb::bytes & chat_template) {
                 std::vector<logo::ChatMessage> chat;
                 for (const auto & [role, content] : messages) chat.push_back({from_bytes(role), from_bytes(content)});
                 const std::string tmpl = from_bytes(chat_template);
                 std::string text;
                 {
                     nb::gil_scoped_release release;  // as tokenize: long conversations format off the GIL
                     text = m.apply_chat_template(chat, add_generation_prompt, tmpl);
                 }
                 return as_bytes(text);
             },
             "messages"_a, "add_generation_prompt"_a = true, "template"_a = nb::bytes(""))
        .def("chat_tokens",
             [](const logo::Model & m, const std::vector<std::pair<nb::bytes, nb::bytes>> & messages,
                bool add_generation_prompt, const nb::bytes & chat_template, bool add_special, int64_t limit) {
                 std::vector<logo::ChatMessage> chat;
                 for (const auto & [role, content] : messages) chat.push_back({from_bytes(role), from_bytes(content)});
                 const std::string tmpl = from_bytes(chat_template);
                 nb::gil_scoped_release release;
                 return m.chat_tokens(chat, add_generation_prompt, tmpl, add_special, limit);
             },
             "messages"_a, "add_generation_prompt"_a = true, "template"_a = nb::bytes(""), "add_special"_a = true,
             "limit"_a = -1);

    nb::class_<logo::AdapterPool>(m, "AdapterPool")
        .def(nb::init<const logo::Model &>(), "model"_a, nb::keep_alive<1, 2>())
        .def("add",
             [](logo::AdapterPool & p, const std::vector<std::string> & paths, const std::vector<std::string> & names) {
                 nb::gil_scoped_release release;
                 return p.add(paths, names);
             },
             "paths"_a, "names"_a = std::vector<std::string>{})
        .def("add_tensors",
             [](logo::AdapterPool & p, const std::vector<AdapterTuple> & adapters) {
                 std::vector<logo::AdapterData> data;
                 for (const auto & [name, source, alpha, matrices] : adapters) {
                     logo::AdapterData d{name, source, alpha, {}};
                     for (const auto & [weight, a, b, scale, type, a_name, b_name] : matrices) {
                         if (a.shape(0) != b.shape(1)) {
                             throw std::invalid_argument("adapter '" + source + "': '" + weight + "' has A of " +
                                                         std::to_string(a.shape(0)) + " rows but B of " +
                                                         std::to_string(b.shape(1)) + " columns; both are the rank");
                         }
                         d.matrices.push_back({weight, int64_t(a.shape(0)), int64_t(a.shape(1)), int64_t(b.shape(0)),
                                               a.data(), b.data(), scale, type, a_name, b_name});
                     }
                     data.push_back(std::move(d));
                 }
                 nb::gil_scoped_release release;  // the arrays stay alive: `adapters` holds them
                 return p.add_tensors(data);
             },
             "adapters"_a,
             "Adapters from memory: [(name, source, alpha, [(weight, A (r, n_in) float32, B (n_out, r) float32, "
             "scale, type, a_name, b_name), ...]), ...]; all or none, checked as files are.")
        .def("remove", &logo::AdapterPool::remove, "name"_a)
        .def("names", &logo::AdapterPool::names)
        .def("index_of", &logo::AdapterPool::index_of, "name"_a)
        .def("__len__", &logo::AdapterPool::size)
        .def_prop_ro("bytes", &logo::AdapterPool::bytes)
        .def("info",
             [](const logo::AdapterPool & p, size_t i) {
                 const logo::AdapterInfo a = p.info(i);
                 nb::dict d;
                 d["name"] = a.name;
                 d["path"] = a.path;
                 d["alpha"] = a.alpha;
                 d["bytes"] = a.bytes;
                 nb::list mats;
                 for (const auto & mtx : a.matrices) {
                     nb::dict md;
                     md["weight"] = mtx.weight;
                     md["layer"] = mtx.layer;
                     md["module"] = mtx.module;
                     md["rank"] = mtx.rank;
                     md["scale"] = mtx.scale;
                     md["type_a"] = mtx.type_a;
                     md["type_b"] = mtx.type_b;
                     mats.append(md);
                 }
                 d["matrices"] = mats;
                 return d;
             },
             "index"_a);

    // Python calls it a Session: a logo::Context (KV cache of n_seq sequences over a shared Model).
    nb::class_<logo::Context>(m, "Session")
        .def("__init__",
             [](logo::Context * self, const logo::Model & model, int n_ctx, int n_seq, int n_batch) {
                 logo::ContextParams p;
                 p.n_ctx = n_ctx;
                 p.n_seq = n_seq;
                 p.n_batch = n_batch;
                 nb::gil_scoped_release release;
                 new (self) logo::Context(model, p);
             },
             "model"_a, "n_ctx"_a = 2048, "n_seq"_a = 1, "n_batch"_a = 512)
        .def_prop_ro("n_ctx", &logo::Context::n_ctx)
        .def_prop_ro("n_seq", &logo::Context::n_seq)
        .def("length", &logo::Context::length, "seq"_a)
        .def("clear", &logo::Context::clear, "seq"_a)
        .def("clear_all", &logo::Context::clear_all)
        .def("truncate", &logo::Context::truncate, "seq"_a, "length"_a)
        .def("evaluate",
             [](logo::Context & c, int first_seq, int n_seq, const std::vector<int32_t> & tokens, bool all_logits,
                const logo::AdapterPool * pool, const std::vector<logo::Mixture> & selections, const std::string & fold) {
                 const logo::FoldMode mode = fold_mode(fold);
                 std::vector<float> logits;
                 {
                     nb::gil_scoped_release release;
                     logits = c.evaluate(first_seq, n_seq, tokens, all_logits, pool, selections, mode);
                 }
                 return as_matrix(std::move(logits), size_t(c.n_vocab()));
             },
             "first_seq"_a, "n_seq"_a, "tokens"_a, "all_logits"_a = false, "pool"_a = nb::none(),
             "selections"_a = std::vector<logo::Mixture>{}, "fold"_a = "exact",
             "Append tokens (sequence-major, equal count per sequence) and return logits.")
        .def("block_input",
             [](logo::Context & c, int seq, const std::vector<int32_t> & tokens, int layer) {
                 std::vector<float> h;
                 {
                     nb::gil_scoped_release release;
                     h = c.block_input(seq, tokens, layer);
                 }
                 const size_t n = h.size();
                 return as_matrix(std::move(h), n);
             },
             "seq"_a, "tokens"_a, "layer"_a)
        .def("hidden_states",
             [](logo::Context & c, int seq, const std::vector<int32_t> & tokens, const std::vector<int> & layers) {
                 std::vector<std::vector<float>> hs;
                 {
                     nb::gil_scoped_release release;
                     hs = c.hidden_states(seq, tokens, layers);
                 }
                 const size_t n_embd = tokens.empty() || hs.empty() ? 0 : hs[0].size() / tokens.size();
                 nb::list out;
                 for (auto & h : hs) out.append(as_matrix(std::move(h), n_embd));
                 return out;
             },
             "seq"_a, "tokens"_a, "layers"_a,
             "Residual entering each of `layers` at every token: a list of float32 (n_tokens, n_embd) arrays.")
        .def("generate",
             [](logo::Context & c, const std::vector<std::vector<int32_t>> & prompts, int max_tokens, float temperature,
                int top_k, float top_p, float min_p, uint64_t seed, const std::vector<nb::bytes> & stop,
                bool ignore_eos, nb::object on_text, const logo::AdapterPool * pool,
                const std::vector<logo::Mixture> & selections, bool logprobs, int top_logprobs,
                const std::string & fold) {
                 logo::GenerateOptions o;
                 o.fold = fold_mode(fold);
                 o.max_tokens = max_tokens;
                 o.sampling = {temperature, top_k, top_p, min_p, seed};
                 o.stop = from_bytes(stop);
                 o.ignore_eos = ignore_eos;
                 o.logprobs = logprobs;
                 o.top_logprobs = top_logprobs;
                 logo::TextCallback callback;
                 if (!on_text.is_none()) {
                     callback = [on_text](int seq, const std::string & piece) {
                         nb::gil_scoped_acquire acquire;
                         nb::object keep_going = on_text(seq, as_bytes(piece));
                         return keep_going.is_none() || nb::cast<bool>(keep_going);
                     };
                 }
                 std::vector<logo::Completion> results;
                 {
                     nb::gil_scoped_release release;
                     results = c.generate(prompts, o, pool, selections, callback);
                 }
                 nb::list out;
                 for (const auto & r : results) out.append(completion_to_dict(r));
                 return out;
             },
             "prompts"_a, "max_tokens"_a = 128, "temperature"_a = 0.8f, "top_k"_a = 40, "top_p"_a = 0.95f,
             "min_p"_a = 0.05f, "seed"_a = 0, "stop"_a = std::vector<nb::bytes>{}, "ignore_eos"_a = false,
             "on_text"_a = nb::none(), "pool"_a = nb::none(), "selections"_a = std::vector<logo::Mixture>{},
             "logprobs"_a = false, "top_logprobs"_a = 0, "fold"_a = "exact")
        .def("folded_weights",
             [](logo::Context & c, const logo::AdapterPool & pool, const logo::Mixture & selection, const std::string & fold) {
                 const logo::FoldMode mode = fold_mode(fold);
                 std::vector<logo::FoldedWeight> weights;
                 {
                     nb::gil_scoped_release release;
                     weights = c.folded_weights(pool, selection, mode);
                 }
                 nb::list out;
                 for (const auto & w : weights) {
                     out.append(nb::make_tuple(w.name, w.type, nb::bytes(reinterpret_cast<const char *>(w.data.data()), w.data.size())));
                 }
                 return out;
             },
             "pool"_a, "selection"_a, "fold"_a = "requantize",
             "The adapted weights with the mixture folded in: a list of (GGUF name, ggml type name, plain bytes).");

    bind_batch(m);

    m.def("route",
          [](logo::Context & c, int seq, const logo::AdapterPool & pool, const std::vector<int32_t> & tokens, int k,
             const std::string & signal, const std::string & probe, const std::vector<int> & layers,
             const std::string & module, const std::string & calibration, const std::string & position,
             const std::string & fallback_module, const std::string & weighting, float temperature) {
              const logo::RouterOptions o = router_options(k, signal, probe, layers, module, calibration, position,
                                                           fallback_module, weighting, temperature);
              logo::Routing r;
              {
                  nb::gil_scoped_release release;
                  r = c.route(seq, pool, tokens, o);
              }
              nb::dict d;
              d["selected"] = r.selected;
              d["weights"] = as_vector(std::move(r.weights));
              d["signals"] = as_vector(std::move(r.signals));
              d["raw_signals"] = as_vector(std::move(r.raw_signals));
              d["norms"] = as_vector(std::move(r.norms));
              d["entropies"] = as_vector(std::move(r.entropies));
              d["scored"] = r.scored;
              d["probe_seconds"] = r.probe_seconds;
              d["select_seconds"] = r.select_seconds;
              d["calibration_seconds"] = r.calibration_seconds;
              d["layer"] = r.layer;
              d["layers"] = r.layers;
              d["signal"] = logo::to_string(r.signal);
              d["calibration"] = logo::to_string(r.calibration);
              d["position"] = logo::to_string(r.position);
              d["module"] = r.module;
              d["weighting"] = logo::to_string(r.weighting);
              d["temperature"] = r.temperature;
              return d;
          },
          "session"_a, "seq"_a, "pool"_a, "tokens"_a, "k"_a = 20, "signal"_a = "norm", "probe"_a = "base",
          "layers"_a = std::vector<int>{-1}, "module"_a = "attn_q", "calibration"_a = "none", "position"_a = "last",
          "fallback_module"_a = "", "weighting"_a = "signal", "temperature"_a = 1.0f);
    // The C++ default router's softmax temperature (RouterOptions::temperature), so Python has one source.
    m.attr("max_top_logprobs") = logo::kMaxTopLogprobs;
    m.attr("max_mixture_weight") = logo::kMaxMixtureWeight;
    m.attr("default_mixture_temperature") = logo::RouterOptions{}.temperature;
    m.attr("max_threads") = logo::kMaxThreads;
}
