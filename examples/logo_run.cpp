// logo-run: prompt in, routed answer streamed out, routing printed. Uses only the public API.
//
//   logo-run MODEL.gguf ADAPTERS_DIR_OR_FILE... -p "prompt" [-k 1] [-n 64] [--threads N]
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "logo/logo.h"

namespace fs = std::filesystem;

static int usage() {
    std::cerr << "usage: logo-run MODEL.gguf ADAPTER_DIR_OR_FILE... -p PROMPT [-k K] [-n MAX_TOKENS] [--threads N]\n";
    return 2;
}

// The whole text as an integer in [lo, hi], or false: atoi would read "abc" as 0 and wrap huge values.
static bool parse_int(const std::string & text, long lo, long hi, int & out) {
    if (text.empty()) return false;
    char * end = nullptr;
    errno = 0;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || value < lo || value > hi) return false;
    out = int(value);
    return true;
}

int main(int argc, char ** argv) {
    std::string model_path, prompt;
    std::vector<std::string> adapters;
    int k = 1, max_tokens = 64, threads = 0;  // k = 1: as logo-cpp run, chat and serve
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        auto count = [&](int & out, long lo, const char * what) {
            const std::string text = next();
            if (parse_int(text, lo, 2147483647L, out)) return true;
            std::cerr << "logo-run: " << arg << " takes " << what << " (an integer >= " << lo << "), got '" << text
                      << "'\n";
            return false;
        };
        if (arg == "-p") prompt = next();
        else if (arg == "-k") { if (!count(k, 1, "the number of adapters per prompt")) return 2; }
        else if (arg == "-n") { if (!count(max_tokens, 0, "the most tokens to generate")) return 2; }
        else if (arg == "--threads") { if (!count(threads, 0, "CPU threads (0: one per core)")) return 2; }
        else if (model_path.empty()) model_path = arg;
        else adapters.push_back(arg);
    }
    if (model_path.empty() || adapters.empty() || prompt.empty()) return usage();

    try {
        logo::ModelParams model_params;
        model_params.n_threads = threads;
        logo::Model model(model_path, model_params);

        // A directory stands for its *.gguf files, in name order.
        std::vector<std::string> files;
        for (const std::string & a : adapters) {
            if (fs::is_directory(a)) {
                std::vector<std::string> found;
                for (const auto & entry : fs::directory_iterator(a)) {
                    if (entry.path().extension() == ".gguf") found.push_back(entry.path().string());
                }
                std::sort(found.begin(), found.end());
                files.insert(files.end(), found.begin(), found.end());
            } else {
                files.push_back(a);
            }
        }
        logo::AdapterPool pool(model);
        pool.add(files);

        logo::ContextParams context_params;
        context_params.n_ctx = 1024;
        logo::Context context(model, context_params);
        logo::RouterOptions router_options;
        router_options.k = k;
        logo::Router router(context, pool, router_options);

        logo::GenerateOptions options;
        options.max_tokens = max_tokens;
        options.sampling.temperature = 0.0f;
        const std::vector<logo::Token> tokens = model.tokenize(prompt, true, true);
        auto [completion, routing] = router.generate(tokens, options, [](int, const std::string & piece) {
            std::cout << piece << std::flush;
            return true;
        });
        std::cout << "\n";
        std::cerr << "routing (" << routing.selected.size() << " of " << pool.size() << " adapters, probe "
                  << routing.probe_seconds * 1e3 << " ms):\n";
        for (const auto & [name, weight] : logo::describe(routing, pool)) {
            std::fprintf(stderr, "  %-20s %.3f\n", name.c_str(), weight);
        }
        const int n = completion.timings.n_generated;
        std::fprintf(stderr, "%d token%s", n, n == 1 ? "" : "s");
        if (n > 1) std::fprintf(stderr, ", %.1f tokens/s", completion.timings.decode_tokens_per_second());
        std::fprintf(stderr, ", finish: %s\n", completion.finish_reason.c_str());
        return 0;
    } catch (const std::exception & e) {
        std::cerr << "logo-run: error: " << e.what() << "\n";
        return 1;
    }
}
