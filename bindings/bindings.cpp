// The Python face of the runtime: type conversions, keyword arguments, exception translation.
// No logic lives here; logo_cpp/ (Python) adds results as dataclasses, streaming and the CLI.
#include <cmath>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nanobind/stl/pair.h>

#include "adapter_pool.h"
#include "backend.h"
#include "errors.h"
#include "generate.h"
#include "mixture.h"
#include "model.h"
#include "router.h"
#include "session.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Logits leave C++ as a numpy array that owns the vector, without a copy.
nb::ndarray<nb::numpy, float, nb::ndim<2>> as_matrix(std::vector<float> && values, size_t cols) {
    auto * owned = new std::vector<float>(std::move(values));
    nb::capsule owner(owned, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
    const size_t rows = cols ? owned->size() / cols : 0;
    return nb::ndarray<nb::numpy, float, nb::ndim<2>>(owned->data(), {rows, cols}, owner);
}

nb::dict completion_to_dict(const logo::Completion & c) {
    nb::dict d;
    d["text"] = nb::bytes(c.text.data(), c.text.size());
    d["tokens"] = c.tokens;
    d["finish_reason"] = c.finish_reason;
    nb::dict t;
    t["n_prompt"] = c.timings.n_prompt;
    t["n_generated"] = c.timings.n_generated;
    t["prefill_seconds"] = c.timings.prefill_seconds;
    t["decode_seconds"] = c.timings.decode_seconds;
    t["prefill_tokens_per_second"] = c.timings.prefill_tokens_per_second();
    t["decode_tokens_per_second"] = c.timings.decode_tokens_per_second();
    d["timings"] = t;
    return d;
}

logo::GenerateOptions make_options(int max_tokens, float temperature, int top_k, float top_p, float min_p,
                                   uint64_t seed, const std::vector<std::string> & stop, bool ignore_eos) {
    logo::GenerateOptions o;
    o.max_tokens = max_tokens;
    o.sampling.temperature = temperature;
    o.sampling.top_k = top_k;
    o.sampling.top_p = top_p;
    o.sampling.min_p = min_p;
    o.sampling.seed = seed;
    o.stop = stop;
    o.ignore_eos = ignore_eos;
    o.validate();
    return o;
}

nb::ndarray<nb::numpy, float, nb::ndim<1>> as_vector(std::vector<float> && values) {
    auto * owned = new std::vector<float>(std::move(values));
    nb::capsule owner(owned, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
    return nb::ndarray<nb::numpy, float, nb::ndim<1>>(owned->data(), {owned->size()}, owner);
}

// Below this many new tokens, folding a mixture into the weights costs more than it saves.
constexpr int kFoldMinTokens = 16;

// Selections cross the boundary as lists of (pool index, weight) per sequence.
using SelectionSpec = std::vector<std::vector<std::pair<int, float>>>;

std::unique_ptr<logo::Mixture> make_mixture(logo::AdapterPool & pool, const SelectionSpec & spec) {
    std::vector<logo::Selection> per_sequence;
    for (const auto & seq : spec) {
        logo::Selection sel;
        for (const auto & [index, weight] : seq) {
            if (index < 0 || size_t(index) >= pool.size()) throw std::invalid_argument("adapter index out of range");
            if (!std::isfinite(weight)) throw std::invalid_argument("adapter weights must be finite");
            sel.push_back({&pool.at(size_t(index)), weight});
        }
        per_sequence.push_back(std::move(sel));
    }
    return std::make_unique<logo::Mixture>(pool.model(), per_sequence, logo::mixture_type_for(pool.model()));
}

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "logo-cpp runtime core (C++ on ggml)";

    nb::exception<logo::FormatError>(m, "FormatError", PyExc_ValueError);
    nb::exception<logo::ContextOverflow>(m, "ContextOverflowError", PyExc_ValueError);
    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        try {
            std::rethrow_exception(p);
        } catch (const logo::FileNotFound & e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        } catch (const logo::FileError & e) {
            PyErr_SetString(PyExc_OSError, e.what());
        }
    });

    m.def("available_devices", &logo::available_devices, "Devices offered by the linked ggml, e.g. ['CPU'].");
    m.def("default_thread_count", &logo::default_thread_count);

    nb::class_<logo::Model>(m, "Model")
        .def("__init__",
             [](logo::Model * self, const std::string & path, const std::string & device, int n_threads, bool use_mmap) {
                 logo::ModelOptions o;
                 o.device = device;
                 o.n_threads = n_threads;
                 o.use_mmap = use_mmap;
                 nb::gil_scoped_release release;
                 new (self) logo::Model(path, o);
             },
             "path"_a, "device"_a = "auto", "n_threads"_a = 0, "use_mmap"_a = true)
        .def_prop_ro("path", &logo::Model::path)
        .def_prop_ro("arch", [](const logo::Model & m) { return m.hparams().arch_name; })
        .def_prop_ro("n_vocab", [](const logo::Model & m) { return m.hparams().n_vocab; })
        .def_prop_ro("n_embd", [](const logo::Model & m) { return m.hparams().n_embd; })
        .def_prop_ro("n_layer", [](const logo::Model & m) { return m.hparams().n_layer; })
        .def_prop_ro("n_head", [](const logo::Model & m) { return m.hparams().n_head; })
        .def_prop_ro("n_head_kv", [](const logo::Model & m) { return m.hparams().n_head_kv; })
        .def_prop_ro("n_ff", [](const logo::Model & m) { return m.hparams().n_ff; })
        .def_prop_ro("n_ctx_train", [](const logo::Model & m) { return m.hparams().n_ctx_train; })
        .def_prop_ro("device", [](const logo::Model & m) { return std::string(ggml_backend_dev_name(m.device())); })
        .def_prop_ro("n_threads", &logo::Model::n_threads)
        .def_prop_ro("weight_bytes", &logo::Model::weight_bytes)
        .def_prop_ro("bos", [](const logo::Model & m) { return m.vocab().bos(); })
        .def_prop_ro("eos", [](const logo::Model & m) { return m.vocab().eos(); })
        .def("tokenize",
             [](const logo::Model & m, const std::string & text, bool add_special, bool parse_special) {
                 return m.vocab().tokenize(text, add_special, parse_special);
             },
             "text"_a, "add_special"_a = true, "parse_special"_a = false)
        .def("detokenize",
             [](const logo::Model & m, const std::vector<int32_t> & tokens, bool remove_special, bool unparse_special) {
                 std::string s = m.vocab().detokenize(tokens, remove_special, unparse_special);
                 return nb::bytes(s.data(), s.size());
             },
             "tokens"_a, "remove_special"_a = false, "unparse_special"_a = false)
        .def("token_piece",
             [](const logo::Model & m, int32_t token) {
                 if (token < 0 || token >= m.vocab().n_tokens()) throw std::invalid_argument("token id out of range");
                 std::string s = m.vocab().token_piece(token, true);
                 return nb::bytes(s.data(), s.size());
             },
             "token"_a)
        .def("is_end_of_generation", [](const logo::Model & m, int32_t t) { return m.vocab().is_end_of_generation(t); })
        .def("apply_chat_template",
             [](const logo::Model & m, const std::vector<std::pair<std::string, std::string>> & messages,
                bool add_generation_prompt, const std::string & template_override) {
                 std::vector<logo::ChatMessage> chat;
                 for (const auto & [role, content] : messages) chat.push_back({role, content});
                 std::string s = m.vocab().apply_chat_template(chat, add_generation_prompt, template_override);
                 return nb::bytes(s.data(), s.size());
             },
             "messages"_a, "add_generation_prompt"_a = true, "template"_a = "");

    // Sessions hold the model through a shared_ptr so a Python Model may be dropped while sessions live.
    nb::class_<logo::Session>(m, "Session")
        .def("__init__",
             [](logo::Session * self, std::shared_ptr<logo::Model> model, int n_ctx, int n_seq, int n_batch) {
                 logo::SessionOptions o;
                 o.n_ctx = n_ctx;
                 o.n_stream = n_seq;
                 o.n_batch = n_batch;
                 nb::gil_scoped_release release;
                 new (self) logo::Session(std::move(model), o);
             },
             "model"_a, "n_ctx"_a = 2048, "n_seq"_a = 1, "n_batch"_a = 512)
        .def_prop_ro("n_ctx", &logo::Session::n_ctx)
        .def_prop_ro("n_seq", &logo::Session::n_stream)
        .def("length", &logo::Session::length, "seq"_a)
        .def("clear", &logo::Session::clear, "seq"_a)
        .def("clear_all", &logo::Session::clear_all)
        .def("truncate", &logo::Session::truncate, "seq"_a, "length"_a)
        .def("evaluate",
             [](logo::Session & s, int first_seq, int n_seq, const std::vector<int32_t> & tokens, bool all_logits,
                logo::AdapterPool * pool, const SelectionSpec & selections) {
                 std::vector<float> logits;
                 {
                     nb::gil_scoped_release release;
                     std::unique_ptr<logo::Mixture> mixture;
                     if (pool && !selections.empty()) {
                         if (selections.size() != 1 && int(selections.size()) != s.n_stream()) {
                             throw std::invalid_argument("give one adapter selection for all sequences or one per sequence of the session");
                         }
                         mixture = make_mixture(*pool, selections);
                     }
                     logits = s.evaluate(first_seq, n_seq, tokens, all_logits, mixture ? &mixture->terms() : nullptr);
                 }
                 return as_matrix(std::move(logits), size_t(s.model().hparams().n_vocab));
             },
             "first_seq"_a, "n_seq"_a, "tokens"_a, "all_logits"_a = false, "pool"_a = nb::none(),
             "selections"_a = SelectionSpec{},
             "Append tokens (sequence-major, equal count per sequence) and return logits.")
        .def("block_input",
             [](logo::Session & s, int seq, const std::vector<int32_t> & tokens, int layer) {
                 std::vector<float> h;
                 {
                     nb::gil_scoped_release release;
                     h = s.block_input(seq, tokens, layer, nullptr);
                 }
                 return as_matrix(std::move(h), size_t(s.model().hparams().n_embd));
             },
             "seq"_a, "tokens"_a, "layer"_a)
        .def("generate",
             [](logo::Session & s, const std::vector<std::vector<int32_t>> & prompts, int max_tokens, float temperature,
                int top_k, float top_p, float min_p, uint64_t seed, const std::vector<std::string> & stop,
                bool ignore_eos, nb::object on_text, logo::AdapterPool * pool, const SelectionSpec & selections) {
                 std::vector<logo::GenerateOptions> options;
                 for (size_t i = 0; i < prompts.size(); ++i) {
                     // Each sequence gets its own generator, seeded apart so a batch is not n copies.
                     options.push_back(make_options(max_tokens, temperature, top_k, top_p, min_p, seed + i, stop, ignore_eos));
                 }
                 logo::TextCallback callback;
                 if (!on_text.is_none()) {
                     callback = [on_text](int seq, const std::string & piece) {
                         nb::gil_scoped_acquire acquire;
                         nb::object keep_going = on_text(seq, nb::bytes(piece.data(), piece.size()));
                         return keep_going.is_none() || nb::cast<bool>(keep_going);
                     };
                 }
                 std::vector<logo::Completion> results;
                 {
                     nb::gil_scoped_release release;
                     std::unique_ptr<logo::Mixture> mixture;
                     if (pool && !selections.empty()) {
                         if (selections.size() != 1 && int(selections.size()) != s.n_stream()) {
                             throw std::invalid_argument("give one adapter selection for all sequences or one per sequence of the session");
                         }
                         mixture = make_mixture(*pool, selections);
                         // One long generation: fold the mixture into the weights so decoding costs what
                         // the base model costs (see Mixture::fold); batches keep the low-rank terms.
                         if (prompts.size() == 1 && max_tokens >= kFoldMinTokens && mixture->foldable(s.model())) {
                             mixture->fold(s);
                         }
                     }
                     results = logo::generate(s, prompts, options, mixture ? &mixture->terms() : nullptr, callback);
                 }
                 nb::list out;
                 for (const auto & c : results) out.append(completion_to_dict(c));
                 return out;
             },
             "prompts"_a, "max_tokens"_a = 128, "temperature"_a = 0.8f, "top_k"_a = 40, "top_p"_a = 0.95f,
             "min_p"_a = 0.05f, "seed"_a = 0, "stop"_a = std::vector<std::string>{}, "ignore_eos"_a = false,
             "on_text"_a = nb::none(), "pool"_a = nb::none(), "selections"_a = SelectionSpec{});

    nb::class_<logo::AdapterPool>(m, "AdapterPool")
        .def(nb::init<std::shared_ptr<const logo::Model>>(), "model"_a)
        .def("add",
             [](logo::AdapterPool & p, const std::vector<std::string> & paths, const std::vector<std::string> & names) {
                 nb::gil_scoped_release release;
                 return p.add(paths, names);
             },
             "paths"_a, "names"_a = std::vector<std::string>{})
        .def("remove", &logo::AdapterPool::remove, "name"_a)
        .def("names", &logo::AdapterPool::names)
        .def("index_of", &logo::AdapterPool::index_of, "name"_a)
        .def("__len__", &logo::AdapterPool::size)
        .def_prop_ro("bytes", &logo::AdapterPool::bytes)
        .def("info",
             [](const logo::AdapterPool & p, size_t i) {
                 const logo::Adapter & a = p.at(i);
                 nb::dict d;
                 d["name"] = a.name;
                 d["path"] = a.path;
                 d["alpha"] = a.alpha;
                 d["bytes"] = a.bytes;
                 nb::list mats;
                 for (const auto & mtx : a.matrices) {
                     nb::dict md;
                     md["weight"] = mtx.weight_name;
                     md["layer"] = mtx.layer;
                     md["module"] = mtx.module;
                     md["rank"] = mtx.rank;
                     md["scale"] = mtx.scale;
                     md["type_a"] = std::string(ggml_type_name(mtx.a->type));
                     md["type_b"] = std::string(ggml_type_name(mtx.b->type));
                     mats.append(md);
                 }
                 d["matrices"] = mats;
                 return d;
             },
             "index"_a);

    m.def("route",
          [](logo::Session & s, int seq, logo::AdapterPool & pool, const std::vector<int32_t> & tokens, int k,
             const std::string & signal, const std::string & probe, int layer, const std::string & module) {
              logo::RouterOptions o;
              o.k = k;
              if (signal == "norm") o.signal = logo::Signal::norm;
              else if (signal == "entropy") o.signal = logo::Signal::entropy;
              else throw std::invalid_argument("unknown signal '" + signal + "'; use 'norm' or 'entropy'");
              if (probe == "base") o.probe = logo::ProbeMode::base;
              else if (probe == "all") o.probe = logo::ProbeMode::all;
              else throw std::invalid_argument("unknown probe '" + probe + "'; use 'base' or 'all'");
              o.layer = layer;
              o.module = module;
              logo::Routing r;
              {
                  nb::gil_scoped_release release;
                  r = logo::route(s, seq, pool, tokens, o);
              }
              nb::dict d;
              d["selected"] = r.selected;
              d["weights"] = as_vector(std::move(r.weights));
              d["signals"] = as_vector(std::move(r.signals));
              d["norms"] = as_vector(std::move(r.norms));
              d["entropies"] = as_vector(std::move(r.entropies));
              d["scored"] = r.scored;
              d["probe_seconds"] = r.probe_seconds;
              d["select_seconds"] = r.select_seconds;
              d["layer"] = o.resolved_layer(s.model());
              return d;
          },
          "session"_a, "seq"_a, "pool"_a, "tokens"_a, "k"_a = 20, "signal"_a = "norm", "probe"_a = "base",
          "layer"_a = -1, "module"_a = "attn_q");
}
