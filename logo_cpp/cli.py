"""The `logo-cpp` command line: run, route, inspect, convert, demo, chat, eval, serve, cache, bench.

User mistakes (a missing file, a bad argument, a file that does not fit) end with one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ._limits import INT32_MAX

EXIT_USER_ERROR = 2
# A Ctrl-C anywhere (importing, parsing, running) ends with this line and status (128 + SIGINT, as a shell
# reports it); _logo_cpp_cli, the console entry point, says the same while logo_cpp itself is imported.
INTERRUPTED = "logo-cpp: interrupted"
EXIT_INTERRUPTED = 130


def _die(message: str) -> int:
    print(f"logo-cpp: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings logo_cpp issues about the user's input (e.g. peft.AdapterWarning) print as one 'logo-cpp:
    warning:' line on stderr, as errors do, instead of Python's 'file:line: Category: ...' form."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("logo_cpp"):
            print(f"logo-cpp: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield




def _int32_at_least(lowest: int, text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if not lowest <= value <= INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [{lowest}, {INT32_MAX}], got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts the core holds as int32 (threads, context, k): argparse names the flag."""
    return _int32_at_least(1, text, "positive")


def non_negative_int(text: str) -> int:
    """argparse type for int32 counts and seeds that may be 0 (max tokens, a seed)."""
    return _int32_at_least(0, text, "non-negative")


SEED_LIMIT = 2**64  # Model.generate's seed range [0, 2**64): the core's seed is a uint64 (logo/types.h)


def seed(text: str) -> int:
    """argparse type for --seed: an integer in [0, 2**64), the Python API's range (argparse names the flag)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1 = {SEED_LIMIT - 1}], got {text}")
    return value


def thread_count(text: str) -> int:
    """argparse type for --threads: 1 to ggml's thread limit (logo_cpp's Model refuses more)."""
    from . import _core

    value = _int32_at_least(1, text, "positive")
    if value > _core.max_threads:
        raise argparse.ArgumentTypeError(f"expected at most {_core.max_threads} threads (ggml's limit), got {text}")
    return value


def temperature(text: str) -> float:
    """argparse type for a sampling temperature: a finite number >= 0 (0: greedy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: greedy), got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (a temperature): argparse names the flag."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="base model GGUF file (default: the shipped SmolLM2-135M-Instruct, with the shipped adapters)")
    p.add_argument("--adapters", "-a", nargs="+", default=[],
                   help="adapter GGUF files, PEFT adapter directories, or directories of them (with --model; "
                        "default: the shipped pool)")
    p.add_argument("--device", default="auto", help="auto (a GPU if the linked ggml has one), cpu, or a device name")
    p.add_argument("--threads", "-t", type=thread_count, default=None, help="CPU threads (default: one per core)")
    p.add_argument("--ctx", type=positive_int, default=2048, help="context length in tokens (default 2048)")


def _add_router_args(p: argparse.ArgumentParser) -> None:
    from .router import CALIBRATIONS, DEFAULT_CALIBRATION, POSITIONS

    p.add_argument("--router", default="logo", choices=["logo", "top1", "arrow", "uniform", "random"],
                   help="how to choose adapters (default: logo)")
    # k=1: one adapter answered best on both shipped pools (docs/eval); the paper's reference setting is 20.
    p.add_argument("--k", type=positive_int, default=1,
                   help="adapters per prompt (default 1, as chat and serve; the paper used 20; capped at the pool size)")
    p.add_argument("--signal", default="norm", choices=["norm", "entropy"])
    p.add_argument("--calibration", default=None, choices=CALIBRATIONS,
                   help=f"how LoGo signals are calibrated per adapter (default: {DEFAULT_CALIBRATION}; "
                        "none: the paper's raw signal; arrow's default: none)")
    p.add_argument("--position", default=None, choices=POSITIONS,
                   help="probe vector: the last prompt token or the mean over the prompt's tokens (default: last "
                        "for calibration none and arrow, else mean)")
    p.add_argument("--probe", default="base", choices=["base", "all"])
    p.add_argument("--layer", type=int, nargs="+", default=None,
                   help="probe block(s) (default: the last 8 when calibrated, the last for calibration none; "
                        "arrow: every block)")
    p.add_argument("--module", default=None,
                   help="probe module (default: attn_v when calibrated, attn_q for calibration none and arrow)")
    add_mixture_weight_args(p)
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of sampling and of the random router, in [0, 2**64) (default 0)")
    add_cache_args(p)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--cache-dir / --no-cache, for every command that builds a calibrated router (route, run, chat, serve, eval,
    demo, bench logo/all/serve) and for `cache`; cache_environment(args) applies them."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cache-dir", type=Path, default=None,
                       help="where calibration statistics persist between runs (default: $LOGO_CPP_CACHE_DIR, "
                            "else the user cache dir, ~/.cache/logo-cpp on Linux)")
    where.add_argument("--no-cache", action="store_true",
                       help="compute calibration statistics in this process only (as LOGO_CPP_NO_CACHE=1)")


@contextlib.contextmanager
def cache_environment(args):
    """While a command runs, its --no-cache / --cache-dir are this process's LOGO_CPP_NO_CACHE / LOGO_CPP_CACHE_DIR,
    which calibration_cache.cache_dir reads whenever a router is built without a cache_dir: so every router the
    command builds, wherever it is built (chat's, the server's engine, eval's signal sources, a benchmark's, the
    `logo-cpp serve` that `bench serve` starts), follows the flags, and the flags mean what the variables mean.
    Without either flag the environment is left as it is; afterwards it is restored (main() may run in a process
    that goes on)."""
    from .calibration_cache import ENV_DIR, ENV_OFF

    if getattr(args, "no_cache", False):
        changes = {ENV_OFF: "1"}
    elif getattr(args, "cache_dir", None) is not None:
        changes = {ENV_OFF: "0", ENV_DIR: os.fspath(args.cache_dir)}  # the flag wins over LOGO_CPP_NO_CACHE
    else:
        changes = {}
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def add_rerank_argument(p: argparse.ArgumentParser, cost: str, default_on: bool = False) -> None:
    """`--rerank [MARGIN]` (run, chat, serve): LoGo's confidence rerank at k = 1 (logo_cpp.rerank); ``cost`` says
    what it costs where it is added. ``default_on`` (run): args.rerank defaults to "auto" (the rerank at k = 1 with
    calibrated signals, LoGo's default) and `--no-rerank` turns it off; otherwise it defaults to None (off)."""
    from .rerank import AUTO, DEFAULT_RERANK_MARGIN

    def margin(text: str):
        # argparse runs a string default through ``type`` too: "auto" (the default of run) passes as it is.
        return AUTO if text == AUTO else positive_float(text)

    g = p.add_mutually_exclusive_group()
    g.add_argument("--rerank", type=margin if default_on else positive_float, nargs="?", const=DEFAULT_RERANK_MARGIN,
                   default=AUTO if default_on else None, metavar="MARGIN",
                   help="LoGo at k 1: when the top two adapters' calibrated signals are closer than MARGIN (default "
                        f"{DEFAULT_RERANK_MARGIN:g}), answer with both and keep the one the model is more confident "
                        f"in ({cost})" + ("; on by default at --k 1 with calibrated signals" if default_on else ""))
    if default_on:
        g.add_argument("--no-rerank", dest="rerank", action="store_const", const=None, default=argparse.SUPPRESS,
                       help="serve the probe's top adapter as it is (no confidence rerank)")


def add_mixture_weight_args(p: argparse.ArgumentParser) -> None:
    """--mixture-weights / --mixture-temperature: LoGo's ``weights`` and ``temperature`` (route, run, eval,
    serve, chat), with router.WEIGHTINGS and router.DEFAULT_TEMPERATURE."""
    from .router import DEFAULT_TEMPERATURE, WEIGHTINGS

    p.add_argument("--mixture-weights", default=None, choices=WEIGHTINGS,
                   help="LoGo's mixture weights of the top k: signal (the paper: proportional to the raw signals) "
                        "or softmax (softmax of the calibrated signals / T); default: softmax when calibrated, "
                        "signal for calibration none")
    p.add_argument("--mixture-temperature", type=positive_float, default=None, metavar="T",
                   help=f"the softmax's temperature T (> 0; default {DEFAULT_TEMPERATURE:g}; smaller: more weight "
                        "on the top adapter)")


def add_fold_arg(p: argparse.ArgumentParser) -> None:
    """--fold: how the chosen mixture is computed while it generates (Model.generate's ``fold``; run, chat)."""
    from .model import FOLD_MODES

    p.add_argument("--fold", default="exact", choices=FOLD_MODES,
                   help="exact (default): the adapters' terms as defined; requantize: fold the mixture into copies "
                        "of the adapted weights in their own type, W' = quantize(dequantize(W) + sum w s B A), "
                        "LOSSY on quantized models (every adapted weight moves by up to a quantization step; "
                        "docs/mixtures-on-quantized-bases.md section 11), but decoding costs exactly the base's; "
                        "requantize-stochastic: the same with unbiased (stochastic) rounding of Q4_0/Q4_1/Q5_x/Q8_0 "
                        "weights, which keeps more of the adapters' effect; upcast: fold into Q8_0 copies of the "
                        "quantized adapted weights (an error of a Q8_0 step, not the base's; decoding reads those "
                        "weights at 8 bits, for any number of adapters; section 12)")


def mixture_weight_kwargs(args) -> dict:
    """LoGo's ``weights`` / ``temperature`` from --mixture-weights / --mixture-temperature (None: the default)."""
    return {"weights": args.mixture_weights, "temperature": args.mixture_temperature}


def _load(args):
    """The model and pool a command names; without --model, the shipped default model and its pool (as chat)."""
    import logo_cpp

    from . import default_model

    model_path, adapters = default_model.model_and_adapters(args.model, args.adapters)
    if not adapters:
        raise ValueError("--model needs --adapters: the adapter files or directories to route over")
    model = logo_cpp.Model(model_path, n_ctx=args.ctx, device=args.device, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, adapters)
    return model, pool


def _check_router_args(args) -> None:
    """ValueError for flags the chosen --router would ignore (before anything loads)."""
    if args.router in ("top1", "uniform") and args.k != 1:
        # top1 routes to one adapter and uniform to all of them: a --k they would ignore is a mistake to say.
        chooses = "one adapter" if args.router == "top1" else "every adapter of the pool"
        raise ValueError(f"--k {args.k} does not apply to --router {args.router}, which routes to {chooses}; "
                         f"use --router logo --k {args.k} for the top {args.k}")


def _router(args, model, pool):
    import logo_cpp

    from .rerank import AUTO
    from .router import DEFAULT_CALIBRATION

    layer = None if args.layer is None else args.layer[0] if len(args.layer) == 1 else args.layer
    calibration = args.calibration or DEFAULT_CALIBRATION
    # --cache-dir / --no-cache reach the routers through cache_environment (main applies it to every command).
    if args.router == "logo":
        return logo_cpp.LoGo(model, pool, k=args.k, signal=args.signal, probe=args.probe, layer=layer,
                             module=args.module, calibration=calibration, position=args.position,
                             rerank_margin=getattr(args, "rerank", AUTO), **mixture_weight_kwargs(args))
    if args.router == "top1":
        return logo_cpp.TopOne(model, pool, signal=args.signal, probe=args.probe, layer=layer, module=args.module,
                               calibration=calibration, position=args.position)
    if args.router == "arrow":
        return logo_cpp.Arrow(model, pool, k=args.k, layer=args.layer, module=args.module or "attn_q",
                              calibration=args.calibration or "none", probe=args.probe, position=args.position or "last")
    if args.router == "uniform":
        return logo_cpp.Uniform(model, pool)
    return logo_cpp.RandomK(model, pool, k=args.k, seed=args.seed)


def _routing_dict(routing, pool, every: bool = False) -> dict:
    out = {"method": routing.method, "selected": [{"name": n, "weight": round(float(w), 6)}
                                                  for n, w in zip(routing.names, routing.weights)]}
    if routing.unscored:
        out["unscored"] = routing.unscored
    if routing.calibration is not None:
        out["signal"], out["calibration"], out["layers"] = routing.signal, routing.calibration, routing.layers
        out["position"], out["module"] = routing.position, routing.module
    if routing.weighting is not None:
        out["weighting"], out["temperature"] = routing.weighting, routing.temperature
    if every and routing.signals is not None:
        out["signals"] = {n: (None if s != s else round(float(s), 6)) for n, s in zip(pool.names, routing.signals)}
        out["raw_signals"] = {n: (None if s != s else round(float(s), 6)) for n, s in zip(pool.names, routing.raw_signals)}
    if routing.timings:
        out["timings"] = routing.timings
    return out


def _print_routing(routing, pool, every: bool = False, file=sys.stdout) -> None:
    width = max([len(n) for n in (pool.names if every else routing.names)] + [4])
    print(f"routing ({routing.method}): {len(routing.names)} of {len(pool)} adapters"
          + (f"; weights {weighting_text(routing)}" if routing.weighting is not None else ""), file=file)
    for name, weight in zip(routing.names, routing.weights):
        bar = "#" * max(1, int(round(float(weight) * 40)))
        print(f"  {name:<{width}}  {float(weight):.3f}  {bar}", file=file)
    if routing.unscored:
        print(f"  not scored (no {routing.module} LoRA): {', '.join(routing.unscored)}", file=file)
    if every and routing.signals is not None:
        blocks = ",".join(str(l) for l in routing.layers) if routing.layers else str(routing.layer)
        print(f"signals ({routing.signal} at {routing.module} of block {blocks}, {routing.position} token(s); "
              f"calibration {routing.calibration}):",
              file=file)
        calibrated = routing.calibration != "none"
        header = f"  {'adapter':<{width}}  {'calibrated':>10}  {'raw':>10}" if calibrated else f"  {'adapter':<{width}}  {'raw':>10}"
        print(header + f"  {'weight':>8}", file=file)

        def fmt(v):
            return f"{'-':>10}" if v != v else f"{float(v):>10.5g}"

        weight = {i: float(w) for i, w in zip(routing.indices, routing.weights)}
        for i in routing.ranking():
            w = f"{weight[i]:>8.3f}" if i in weight else f"{'-':>8}"
            if calibrated:
                print(f"  {pool.names[i]:<{width}}  {fmt(routing.signals[i])}  {fmt(routing.raw_signals[i])}  {w}", file=file)
            else:
                print(f"  {pool.names[i]:<{width}}  {fmt(routing.signals[i])}  {w}", file=file)


def weighting_text(routing) -> str:
    """How a LoGo routing's weights were made, in words: "softmax(calibrated signals / 0.25)" or
    "proportional to the raw signals (the paper)"."""
    if routing.weighting == "softmax":
        return f"softmax(calibrated signals / {routing.temperature:g})"
    return "proportional to the raw signals (the paper)"


def context_full_note(completion, max_tokens: int, n_ctx: int) -> Optional[str]:
    """One line for stderr when ``completion`` stopped because the context (``n_ctx`` tokens) was full, not at
    ``max_tokens``; None otherwise. Both end as finish_reason "length" (as OpenAI reports both), but the core
    checks max_tokens first, so a "length" with fewer tokens than max_tokens was cut by the context."""
    if completion is None or completion.finish_reason != "length" or len(completion.tokens) >= max_tokens:
        return None
    return (f"logo-cpp: the answer was cut after {len(completion.tokens)} tokens: the context of {n_ctx} tokens "
            f"(--ctx) is full (prompt {completion.timings.n_prompt} tokens); a larger --ctx leaves more room")


def _note_context_full(completion, args) -> None:
    note = context_full_note(completion, args.max_tokens, args.ctx)
    if note:
        print(note, file=sys.stderr)


def cmd_run(args) -> int:
    from . import rerank as _rerank

    _check_router_args(args)
    model, pool = _load(args)
    if isinstance(args.rerank, float) and (args.router != "logo" or args.k != 1):
        raise ValueError("--rerank applies to --router logo with --k 1")
    router = _router(args, model, pool)
    gen = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, fold=args.fold)
    routing = router.route(args.prompt)
    margin = getattr(router, "rerank_margin", None)  # LoGo at k = 1 with calibrated signals: 0.5 unless --no-rerank
    answer = None
    if margin is not None:
        # A close top two both answer greedily first (logo_cpp.rerank) and the more confident one serves. A greedy,
        # exact call prints the kept answer as it is (not streamed); otherwise the kept adapter generates again.
        answer = _rerank.rerank(model, pool, model._prompt_tokens(args.prompt), routing, margin, args.max_tokens,
                                None, False)
        if answer is not None and not (args.temperature == 0 and args.fold == "exact"):
            answer = None
    if args.json:
        out = answer if answer is not None else model.generate(args.prompt, adapters=routing.as_dict(), **gen)
        _note_context_full(out, args)
        info = _routing_dict(routing, pool)
        if margin is not None:
            info["rerank"] = routing.rerank
        print(json.dumps({"text": out.text, "finish_reason": out.finish_reason, "routing": info,
                          "timings": vars(out.timings)}, indent=2))
        return 0
    _print_routing(routing, pool, file=sys.stderr)
    _print_rerank(getattr(routing, "rerank", None), file=sys.stderr)
    if answer is not None:
        print(answer.text)
        _note_context_full(answer, args)
        return 0
    stream = model.generate(args.prompt, adapters=routing.as_dict(), stream=True, **gen)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    _note_context_full(stream.completion, args)
    return 0


def _print_rerank(info, file=sys.stdout) -> None:
    if info is None or info["margin"] is None:
        return
    if not info["reranked"]:
        print(f"rerank: top two {info['candidates'][0]} / {info['candidates'][1]} {info['margin']:.3f} apart: not "
              "close, not reranked", file=file)
        return
    print(f"rerank: top two {info['candidates'][0]} / {info['candidates'][1]} {info['margin']:.3f} apart; mean "
          f"log-probability of their answers {info['mean_logprobs'][0]:.3f} / {info['mean_logprobs'][1]:.3f}: "
          f"{info['chosen']} answers", file=file)


def cmd_route(args) -> int:
    from . import rerank as _rerank

    _check_router_args(args)
    model, pool = _load(args)
    router = _router(args, model, pool)
    routing = router.route(args.prompt)
    # route generates nothing, so it never reranks; it says what generation (run, LoGo.generate) will do.
    later = _rerank.at_generation(routing, pool.names, getattr(router, "rerank_margin", None))
    if args.json:
        info = _routing_dict(routing, pool, every=args.all)
        if later is not None:
            info["rerank_at_generation"] = later
        print(json.dumps(info, indent=2))
    else:
        _print_routing(routing, pool, every=args.all)
        if later is not None:
            a, b = later["candidates"]
            what = (f"under {later['margin_limit']:g}: at generation both answer and the one the model is more "
                    f"confident in serves" if later["would_rerank"] else
                    f"not under {later['margin_limit']:g}: {a} serves as routed")
            print(f"rerank (happens at generation, not here): top two {a} / {b} {later['margin']:.3f} apart, {what}")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import describe

    info = describe(args.file, base=args.base)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info.get("fits", True) and info.get("supported", True) else 1
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}:")
            for v in value:
                print(f"  {v}")
        else:
            print(f"{key}: {value}")
    return 0 if info.get("fits", True) and info.get("supported", True) else 1


def cmd_convert(args) -> int:
    from .convert import convert

    given = Path(args.peft_dir).resolve()
    # The adapter's name is its directory's, also when the user points at the safetensors file inside it.
    out = args.out or Path((given.parent.name if given.suffix == ".safetensors" else given.name) + ".gguf")
    result = convert(args.peft_dir, out, args.base, outtype=args.outtype, task_name=args.task_name, force=args.force)
    folded = (f"; {len(result.folded)} matrices carry their own PEFT scale in lora_b (alpha_pattern/use_rslora)"
              if result.folded else "")
    print(f"wrote {result.path}: {result.arch} LoRA, {result.matrices} matrices, {args.outtype}, "
          f"alpha {result.alpha:g}{folded}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(threads=args.threads, device=args.device, pool_path=args.pool, k=args.k, n=args.n, seed=args.seed)


def cmd_chat(args) -> int:
    from .chat import run_chat

    return run_chat(args)


def cmd_eval(args) -> int:
    from .evaluate import run_eval

    return run_eval(args)


def cmd_serve(args) -> int:
    from .server.main import MISSING_EXTRA, run

    try:
        return run(args)
    except ImportError as exc:
        if str(exc).startswith(MISSING_EXTRA):
            return _die(str(exc))
        raise


def cmd_cache(args) -> int:
    from . import calibration_cache

    setting = False if args.no_cache else args.cache_dir
    directory = calibration_cache.cache_dir(setting)
    if directory is None:
        print("the calibration disk cache is off (LOGO_CPP_NO_CACHE is set)")
        return 0
    if args.clear:
        removed = calibration_cache.clear(directory)
        print(f"removed {removed} files from {directory}")
        return 0
    info = calibration_cache.describe(directory)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"calibration cache: {info['directory']}")
    print(f"  {info['files']} statistics files ({info['entries']} statistics), {info['bytes']} bytes; "
          f"clear with `logo-cpp cache --clear` (or delete the directory)")
    for one in info["models"]:
        print(f"  {one['entries']:6d}  {one['model']}")
    for path in info["unreadable"]:
        print(f"  unreadable (corrupt or another format; ignored, rewritten when its model routes again): {path}")
    return 0


def cmd_bench(args, rest: Sequence[str]) -> int:
    from ._llama_cpp import quiet
    from .bench import core, logo, quant, serve, suite

    quiet()  # llama.cpp's loader, quantizer and context logs (hundreds of lines per model) stay off the output

    mains = {"all": suite.main, "core": core.main, "logo": logo.main, "quant": quant.main, "serve": serve.main}
    # The benchmark parses its own options; those that build calibrated routers (all, logo, serve) take
    # --cache-dir / --no-cache too, applied here as every command's.
    cache = argparse.ArgumentParser(add_help=False)
    add_cache_args(cache)
    cache_args = cache.parse_known_args(list(rest))[0] if args.what in ("all", "logo", "serve") else None
    with cache_environment(cache_args):
        mains[args.what](list(rest))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logo-cpp", description="Many LoRA adapters per input on local hardware "
                                     "(LoGo routing and mixtures on ggml).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="route a prompt over an adapter pool and stream the answer")
    _add_model_args(p)
    _add_router_args(p)
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--max-tokens", "-n", type=non_negative_int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=temperature, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_rerank_argument(p, "one more greedy generation for a close top two, whose kept answer is printed whole, "
                           "not streamed", default_on=True)
    add_fold_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("route", help="print the routing of a prompt only")
    _add_model_args(p)
    _add_router_args(p)
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--all", action="store_true", help="the signal of every adapter")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("inspect", help="describe a base model or adapter GGUF file, or a PEFT LoRA directory")
    p.add_argument("file")
    p.add_argument("--base", help="a base model: check that the adapter fits it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="write a PEFT LoRA directory as a GGUF LoRA in llama.cpp's format")
    p.add_argument("peft_dir", help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", "-o", type=Path, default=None, help="output GGUF (default: ./<directory name>.gguf)")
    p.add_argument("--base", required=True, help="the base model GGUF the adapter is for (shapes are checked)")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                   help="tensor type (default f32, as llama.cpp's convert_lora_to_gguf.py)")
    p.add_argument("--task-name", default=None, help="written as adapter.lora.task_name")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists (default: refuse)")
    p.set_defaults(func=cmd_convert)

    from . import chat, demo, evaluate

    p = sub.add_parser("demo", help="LoGo on the shipped default model (SmolLM2-135M-Instruct) and its task adapters")
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("chat", help="chat in the terminal, every turn routed by LoGo (default: the shipped model)")
    chat.add_arguments(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="LoGo and baseline routers on the shipped held-out set (the paper's protocol)")
    evaluate.add_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server that routes every request with LoGo "
                       "and batches all running requests")
    from .server.main import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cache", help="where calibration statistics persist between runs, how large; --clear")
    add_cache_args(p)
    p.add_argument("--clear", action="store_true", help="delete every cached statistic (they are recomputed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("bench", help="speed side by side with llama.cpp (logo-cpp bench --help for its options)")
    p.add_argument("what", nargs="?", default="all", choices=["all", "core", "logo", "quant", "serve"],
                   help="all (the full report, default), core (base model), logo (the LoGo targets), quant "
                        "(mixtures on quantized bases), serve (logo-cpp serve vs llama_cpp.server)")
    p.set_defaults(func=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a Ctrl-C anywhere, a command's imports and argument parsing included
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:
        # Everything after `bench [WHAT]` belongs to the benchmark's own parser, --help included.
        what = argv[1:2] if argv[1:2] and argv[1] in ("all", "core", "logo", "quant", "serve") else []
        args = parser.parse_args(["bench", *what])
        rest = argv[1 + len(what):]
    else:
        args, rest = parser.parse_args(argv), []
    args.argv = argv  # the command line as given, for reports that record how they were made
    try:
        with _warnings_as_lines():
            if args.command == "bench":
                return cmd_bench(args, rest)
            with cache_environment(args):
                return args.func(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        return _die(str(exc))
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return _die(str(message))
    except RuntimeError as exc:
        # The core reports allocations it could not make (a KV cache or adapter stacks larger than memory) as
        # "out of memory: ..."; that is a user-sized request, so one line. Anything else is a bug: traceback.
        if str(exc).startswith("out of memory"):
            return _die(str(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
