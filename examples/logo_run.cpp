// logo-run: prompt in, routed answer streamed out, routing printed. Uses only the public API.
//
//   logo-run MODEL.gguf ADAPTERS_DIR_OR_FILE... -p "prompt" [-k 3] [-n 64] [--threads N]
#include <algorithm>
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

int main(int argc, char ** argv) {
    std::string model_path, prompt;
    std::vector<std::string> adapters;
    int k = 3, max_tokens = 64, threads = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (arg == "-p") prompt = next();
        else if (arg == "-k") k = std::atoi(next().c_str());
        else if (arg == "-n") max_tokens = std::atoi(next().c_str());
        else if (arg == "--threads") threads = std::atoi(next().c_str());
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
        std::fprintf(stderr, "%d tokens, %.1f tokens/s, finish: %s\n", completion.timings.n_generated,
                     completion.timings.decode_tokens_per_second(), completion.finish_reason.c_str());
        return 0;
    } catch (const std::exception & e) {
        std::cerr << "logo-run: error: " << e.what() << "\n";
        return 1;
    }
}
