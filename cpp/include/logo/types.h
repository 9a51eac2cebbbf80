// Plain value types of the public API: options, results, routing. No ggml and no Python in here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace logo {

using Token = int32_t;

// The most CPU threads a Model computes with: ggml's GGML_MAX_N_THREADS (its thread pool's limit). ggml's
// OpenMP path does not refuse more; it would start that many threads for every graph evaluation.
constexpr int kMaxThreads = 512;

struct ChatMessage {
    std::string role;
    std::string content;
};

// Greedy, or temperature sampling after top-k, top-p and min-p truncation (llama.cpp's default order).
struct SamplingParams {
    float temperature = 0.8f;  // <= 0: greedy
    int top_k = 40;            // 0: off
    float top_p = 0.95f;       // 1: off
    float min_p = 0.05f;       // 0: off
    uint64_t seed = 0;

    void validate() const;  // throws std::invalid_argument naming the argument
};

// What a mixture becomes while one mixture generates (GenerateOptions::fold, Context::evaluate's `fold`).
// exact (the default): the adapters' terms as defined, sum_i w_i s_i B_i A_i x beside W x: a low-rank pair
//   on quantized bases (README "How a mixture is applied"); over F32/F16/BF16 weights a single prompt
//   generating >= 16 tokens gets the mixture folded into copies of the adapted weights, rounded once to
//   their own float type.
// requantize: LOSSY on quantized bases. The mixture is folded into copies of the adapted weights in their
//   own type, W' = quantize_T(dequantize(W) + sum_i w_i s_i B_i A_i), with T the weight's type and ggml's
//   quantizer for T (the way llama.cpp's export-lora merges a LoRA into a quantized model); the delta is
//   computed in F32 from the adapters as stored. Generation then costs exactly what the base costs, for any
//   k, but every adapted weight moves by up to a quantization step of its block (the size of the base's own
//   quantization error, independent of the adapters' effect). Over F32/F16/BF16 weights it is the exact
//   mode's fold, for every length. Needs one mixture for all sequences, and a device that can both
//   dequantize and quantize the weight's type (ggml's CPU: every type but IQ1_S/IQ1_M/IQ2_XXS/IQ2_XS/IQ2_S/
//   IQ3_XXS/IQ3_S, which need an importance matrix); otherwise std::invalid_argument naming the tensor and
//   type. Measured error and speed: docs/mixtures-on-quantized-bases.md section 11.
// requantize_stochastic: as requantize, then every quant of a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weight is re-rounded
//   on its block's grid up or down at random (seeded by the weight's name: deterministic), with the
//   probability that makes the expected dequantized value the exact sum: a change below half a step, which
//   nearest rounding erases, survives on average over the inputs a matmul sums. Other types (K-quants, IQ*)
//   keep nearest rounding. Lossy like requantize, with a different error (docs section 11 measures both).
// upcast: the mixture folded into Q8_0 copies of quantized adapted weights, whatever their type:
//   W' = quantize_Q8_0(dequantize(W) + sum_i w_i s_i B_i A_i) (ggml's nearest Q8_0 rounding), so the copy is
//   finer than the weight it replaces and the rounding error is a Q8_0 step (1/254 of a block's range, ~17x
//   finer than Q4_1's), where requantize's is the base's own step. Decode then reads the adapted weights at
//   8.5 bits instead of their own (on a Q4_1 SmolLM2 with attn_q/attn_v adapted: +6% of a step's bytes), the
//   same for every k. F32/F16/BF16 weights: the exact mode's fold, for every length. One mixture for all
//   sequences; a device that can dequantize the type and quantize Q8_0 (ggml's CPU: every type, IQ* included).
//   An upcast copy of a CPU-repacked weight is a plain Q8_0 tensor. Measured: docs section 12.
enum class FoldMode { exact, requantize, requantize_stochastic, upcast };

struct GenerateOptions {
    int max_tokens = 128;
    SamplingParams sampling;
    std::vector<std::string> stop;  // generation ends before the first occurrence of any of these
    // Never end at an end-of-generation token: they are masked before sampling (logit -inf), as llama-server's
    // ignore_eos, so exactly max_tokens visible tokens come (unless a stop string or the context ends it).
    bool ignore_eos = false;
    // Report each generated token's log-probability (Completion::logprobs), and with top_logprobs > 0 that many
    // most likely alternatives at each step. Off by default: it costs a log-softmax over the vocabulary per
    // token (and a partial sort for top_logprobs). top_logprobs must be in [0, kMaxTopLogprobs] and needs
    // logprobs (invalid_argument otherwise), as OpenAI's API.
    bool logprobs = false;
    int top_logprobs = 0;
    FoldMode fold = FoldMode::exact;  // see FoldMode (ContinuousBatch takes exact only)

    void validate() const;
};

// OpenAI's bound on top_logprobs (its API refuses more).
constexpr int kMaxTopLogprobs = 20;

// The largest |weight| of an adapter in a mixture (std::invalid_argument beyond, and for NaN/inf). On quantized
// bases a mixture runs as a low-rank pair whose intermediate (w * alpha/r * A x) ggml converts to F16 for the B
// product: a weight large enough takes it past F16's 65504 and every logit turns NaN. On SmolLM2 Q4_1 with its
// shipped adapters that happens between |w| = 3e4 and 6e4 (the exact pair; 6e4-1e5 with fold = requantize).
// 1000 leaves a 30x margin below that, and is far beyond any useful weight: LoGo's weights sum to 1, and a LoRA
// scaled past a few already gives text no adapter was trained for.
constexpr float kMaxMixtureWeight = 1000.0f;

// A generated token's log-probability under the model's own distribution: the log-softmax of the raw logits at
// temperature 1 (natural log), before the sampler's temperature, top-k/top-p/min-p truncation and ignore_eos'
// masking, as OpenAI's API and llama-server (n_probs, post_sampling_probs off) report it. So it does not depend
// on the sampling parameters, and for greedy decoding it is the log-probability of the argmax.
struct TokenLogprob {
    Token token = -1;
    float logprob = 0;
    // The top_logprobs most likely tokens at this step (token, log-probability), most likely first (equal
    // logits: lower id first); it may or may not hold `token`. Empty when top_logprobs is 0.
    std::vector<std::pair<Token, float>> top;
};

// One adapted weight as a fold made it (Context::folded_weights): its GGUF name, ggml type name and data in
// ggml's plain layout for that type (as a GGUF file stores it, never a CPU-repacked layout).
struct FoldedWeight {
    std::string name;
    std::string type;
    std::vector<uint8_t> data;
};

struct Timings {
    int n_prompt = 0;
    int n_generated = 0;
    double prefill_seconds = 0;
    double decode_seconds = 0;
    double prefill_tokens_per_second() const { return prefill_seconds > 0 ? n_prompt / prefill_seconds : 0; }
    // Decode steps are the evaluations after the prompt's: one per generated token but the first.
    double decode_tokens_per_second() const {
        return decode_seconds > 0 && n_generated > 1 ? (n_generated - 1) / decode_seconds : 0;
    }
};

struct Completion {
    std::string text;
    std::vector<Token> tokens;
    std::string finish_reason;  // "stop" (a stop string or the callback), "eos", "length", or "cancelled" (ContinuousBatch::abort)
    Timings timings;
    // With GenerateOptions::logprobs: one entry per token of `tokens` (the token holding a stop string included).
    std::vector<TokenLogprob> logprobs;
    // With GenerateOptions::logprobs and finish_reason "eos": the end-of-generation token that ended it (it is
    // not in `tokens`) and its log-probability; token -1 otherwise.
    TokenLogprob eos;
};

// Receives each new piece of text (complete UTF-8) as it becomes final; returning false stops.
using TextCallback = std::function<bool(int sequence, const std::string & piece)>;

// The raw per-adapter signal, from the probe vector h at a probed block and the adapter's LoRA on the probed
// module (o = (alpha/r) B A h): norm ||o|| and entropy 1 / H(softmax(o)) are the paper's; arrow is
// |<v, h>| / ||h|| with v the top right singular vector of B A (Arrow, Ostapenko et al. 2024, as in PEFT).
enum class Signal { norm, entropy, arrow };
enum class ProbeMode { base, all };
// How raw signals are made comparable across adapters before ranking. none: the paper, raw signals
// (bit for bit as before calibration existed). zscore: (s - mean) / std with the adapter's own statistics
// over the library's generic unlabeled prompts (logo::calibration_prompts()). zscore_sq: the same for the
// squared signal, (s^2 - mean) / std (for the norm: the output energy ||o||^2; measured best, the default;
// docs/calibration). spectral / frobenius: s / ||(alpha/r) B A|| (no data).
enum class Calibration { none, zscore, spectral, frobenius, zscore_sq };
// Where the probe vector is read at each probed block: the last prompt token (the paper), or the mean over
// the prompt's tokens after BOS.
enum class ProbePosition { last, mean };
// How the top-k adapters' mixture weights are made (Routing::weights). signal: proportional to their raw
// signals, w_i = s_i / sum_j s_j (the paper's rule, logo-method.md step 6; bit for bit as before this option
// existed). softmax: w_i = exp(z_i / T) / sum_j exp(z_j / T) over the selected adapters' calibrated signals z_i
// (Routing::signals, what ranks them) at temperature T = RouterOptions::temperature. Raw signals are on each
// adapter's own scale (the reason they need calibration to rank), so weighting by them lets a loud but
// poorly fitting adapter dominate the mixture: on the shipped pool at k = 3 the paper's weights answer 0.552
// of 648 held-out prompts, softmax(z / 0.25) 0.716 (k = 1: 0.711; docs/calibration/README.md).
enum class MixtureWeighting { signal, softmax };

// One adapter matrix's calibration statistic (zscore, zscore_sq), as a persistent cache keeps it
// (Model::calibration_stats): the mean and population std of one raw signal over the generic prompts.
struct CalibrationStat {
    uint64_t matrix = 0;  // the matrix's content hash: shape, values, scale, block and module (FNV-1a)
    Signal signal = Signal::norm;
    ProbePosition position = ProbePosition::last;
    bool squared = false;  // the statistics of s^2 (zscore_sq) rather than of s
    double mean = 0, std = 0;
};

struct RouterOptions {
    int k = 20;
    Signal signal = Signal::norm;
    ProbeMode probe = ProbeMode::base;
    int layer = -1;           // the last probed block; negative counts from the end: -1 is the last block
    int n_blocks = 8;         // probe the n_blocks blocks ending at `layer` (fewer where the model has fewer);
                              // 1: `layer` alone (the paper)
    std::vector<int> layers;  // explicit probed blocks (override `layer` and `n_blocks` when not empty):
                              // signals are calibrated per block, then averaged (summed when calibration is none)
    // The default router (docs/calibration): zscore_sq of the norm at the token mean of the last 8 blocks'
    // attn_v. The paper: n_blocks 1, module attn_q, calibration none, position last.
    std::string module = "attn_v";
    // Probed instead of `module` when no pool adapter adapts `module` at any probed block ("": none, an error).
    std::string fallback_module = "attn_q";
    Calibration calibration = Calibration::zscore_sq;
    ProbePosition position = ProbePosition::mean;
    // The default router's weights: softmax of the calibrated signals at a temperature chosen on half of the
    // held-out prompts of both project pools (docs/calibration/README.md). The paper: weighting signal.
    MixtureWeighting weighting = MixtureWeighting::softmax;
    float temperature = 0.25f;  // softmax only; must be finite and > 0 (validated whatever the weighting)
};

struct Routing {
    std::vector<int> selected;        // pool indices, highest calibrated signal first
    std::vector<float> weights;       // sum to 1, one per selected adapter, as `weighting` says
    std::vector<float> signals;       // one per pool adapter: what ranks them (calibrated); NaN where not scored
    std::vector<float> raw_signals;   // the chosen signal before calibration (the paper's s_i); NaN where not scored
    std::vector<float> norms;         // ||o_i|| (summed over probed blocks), NaN where not scored or for arrow
    std::vector<float> entropies;     // H_i (mean over probed blocks), NaN where not scored, for arrow, and for
                                      // a calibrated norm router (it computes norms only)
    std::vector<bool> scored;         // whether the adapter adapts the probe module at a probed block
    Signal signal = Signal::norm;
    Calibration calibration = Calibration::none;  // how `signals` were made from `raw_signals`
    ProbePosition position = ProbePosition::last;
    MixtureWeighting weighting = MixtureWeighting::signal;  // how `weights` were made
    float temperature = 0;            // the softmax temperature (0 for weighting signal)
    std::string module;               // the probed module (RouterOptions::module, or its fallback)
    int layer = -1;                   // the last probed block
    std::vector<int> layers;          // every probed block, ascending
    double probe_seconds = 0;
    double calibration_seconds = 0;   // computing statistics not yet cached (first use of an adapter)
    double select_seconds = 0;
};

// An adapter given from memory rather than a GGUF file (e.g. a PEFT directory read by the caller).
// Each matrix adds scale * B A x to the output of the base weight it names. Data are row-major float32,
// read during AdapterPool::add_tensors and not kept: `a` is PEFT's lora_A, [rank][n_in]; `b` is lora_B,
// [n_out][rank] (rows already in the base GGUF's order, e.g. llama.cpp's Q/K permutation applied).
struct LoraMatrixData {
    std::string weight;      // the base tensor it adapts, e.g. "blk.3.attn_q.weight"
    int64_t rank = 0, n_in = 0, n_out = 0;
    const float * a = nullptr;
    const float * b = nullptr;
    float scale = 1.0f;      // PEFT: alpha / r, or alpha / sqrt(r) with rsLoRA
    std::string type = "f32";  // kept resident as "f32", "f16" or "bf16"
    std::string a_name, b_name;  // the source's names for A and B, for error messages (default weight.lora_a/b)
};

struct AdapterData {
    std::string name;        // its name in the pool (required, unique)
    std::string source;      // where it came from (a file path), shown in errors and AdapterInfo::path
    float alpha = 0.0f;      // informational only (AdapterInfo::alpha): each matrix carries its own scale
    std::vector<LoraMatrixData> matrices;
};

const char * to_string(Signal signal);
const char * to_string(Calibration calibration);
const char * to_string(ProbePosition position);
const char * to_string(MixtureWeighting weighting);
const char * to_string(FoldMode fold);  // "exact", "requantize", "requantize-stochastic", "upcast"

// A weighted set of pool adapters: (pool index, weight).
using Mixture = std::vector<std::pair<int, float>>;

// What one request of a ContinuousBatch produced in one call: the text that became final (complete
// UTF-8, possibly empty), and once it ended, its whole result.
struct RequestEvent {
    int64_t id = 0;
    std::string text;
    bool finished = false;
    // True on the event that ends a prefill ContinuousBatch::begin() started (the request's first token, or its
    // end at once); false on every other event, a prefill aborted before its end included.
    bool started = false;
    Completion completion;  // complete when finished: text, tokens, finish_reason, timings
    // With GenerateOptions::logprobs: the entries of the tokens accepted in this call (usually one), in order;
    // `text` may lag behind them (text is released once complete UTF-8 and past any stop-string prefix).
    std::vector<TokenLogprob> logprobs;
};

}  // namespace logo
