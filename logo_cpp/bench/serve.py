"""`logo-cpp serve` against llama-cpp-python's own OpenAI server (`llama_cpp.server`), side by side in one run.

Both servers run at once on this machine, on the same base model, with the same threads; they are loaded one
at a time (alternating order between repetitions). llama_cpp.server serves the base with one adapter (what it
can do: one fixed adapter set, one request at a time); logo-cpp routes every request with LoGo over the whole
pool and decodes all running requests together, each with its own mixture. For 1, 4, 8 and 16 concurrent
clients, each client sends its requests one after another (streamed completions of exactly --max-tokens
tokens: end of text is disabled on both servers); reported are the aggregate generated tokens per second and
the time to first token (p50, p95), medians over repetitions.

    logo-cpp bench serve [--clients 1 4 8 16] [--reps 3] [--max-tokens 64] [--out docs/bench]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from . import common
from ..cli import add_cache_args, positive_int, thread_count

PROMPTS = [
    "Translate to French: the cheese is on the table.",
    "Write a SQL query that counts the users who signed up in 2024.",
    "What is 17 times 23?",
    "Summarize in one sentence: the meeting moved to Thursday because the room was booked.",
    "Give three synonyms for happy.",
    "Reverse the word 'planet'.",
    "Write a haiku about autumn rain.",
    "Explain what a binary search does.",
    "Convert 5 kilometers to miles.",
    "Name the capital of Australia.",
    "Sort these numbers: 9, 2, 7, 4.",
    "Write a Python function that returns the square of a number.",
    "Is the sentence 'The cats runs fast' grammatical? Answer yes or no.",
    "List the days of the week in order.",
    "What is the opposite of 'ancient'?",
    "Spell 'necessary' backwards.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server in a subprocess on a loopback port, its output kept in a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path):
        self.name, self.port = name, port
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, path: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def stream_completion(port: int, body: dict, timeout: float = 600.0) -> dict:
    """One streamed completion: seconds to the first text, total seconds, text chunks, routing (if any)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
    first, chunks, routing, usage, finish = None, 0, None, None, None
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if routing is None and chunk.get("routing"):
            routing = chunk["routing"]
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            finish = c.get("finish_reason") or finish
        if any(c.get("text") for c in chunk.get("choices", [])):
            chunks += 1
            if first is None:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    conn.close()
    # Tokens: the usage chunk where the server sends one (logo-cpp; it merges pieces that queue up into one chunk),
    # else max_tokens when the request ran to its length, else one per text chunk (a lower bound).
    tokens = usage if usage is not None else body["max_tokens"] if finish == "length" else chunks
    return {"ttft": first if first is not None else total, "seconds": total, "chunks": chunks, "routing": routing,
            "tokens": tokens}


def run_load(port: int, bodies: list[dict], clients: int, per_client: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another; aggregate figures."""
    results: list = []
    errors: list = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(per_client):
            body = bodies[(c * per_client + r) % len(bodies)]
            try:
                out = stream_completion(port, body)
            except Exception as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(repr(exc))
                return
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {"wall_seconds": wall, "requests": len(results), "tokens": tokens, "tokens_per_second": tokens / wall,
            "ttft_p50": _percentile(ttfts, 50), "ttft_p95": _percentile(ttfts, 95),
            "tokens_per_request": statistics.mean(r["tokens"] for r in results),
            "routings": [r["routing"] for r in results if r["routing"]]}


def _load() -> str:
    """The 1-minute load average: the recorded run is only meaningful on an otherwise idle machine."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    x = (len(sorted_values) - 1) * p / 100
    lo = int(x)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (x - lo)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="logo-cpp bench serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="base model GGUF (default: the shipped default)")
    parser.add_argument("--adapters", type=Path, default=None,
                        help="a directory of adapter GGUF files (default: the shipped pool)")
    parser.add_argument("--adapter", default=None,
                        help="the adapter llama_cpp.server serves (a name in the pool; default: the first)")
    parser.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-client", type=positive_int, default=2)
    parser.add_argument("--max-tokens", type=positive_int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--parallel", type=positive_int, default=None, help="logo-cpp slots (default: the most clients)")
    parser.add_argument("--ctx-size", type=positive_int, default=1024, help="context per request on both servers")
    parser.add_argument("--k", type=positive_int, default=None, help="LoGo's k (default: the server's)")
    parser.add_argument("--threads", type=thread_count, default=os.cpu_count() or 1, help="threads for both servers")
    parser.add_argument("--reps", type=positive_int, default=3, help="repetitions; medians (default 3)")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT, help="where serve.json and serve.md go")
    add_cache_args(parser)  # applied by `logo-cpp bench` (cli.cmd_bench); the server started here inherits them
    args = parser.parse_args(argv)

    model_path = args.model
    if args.adapters is not None:
        adapters = sorted(Path(args.adapters).glob("*.gguf"))
        if not adapters:
            raise FileNotFoundError(f"no *.gguf adapters in '{args.adapters}'")
    if model_path is None or args.adapters is None:
        from ..server.main import default_model_paths

        base, files = default_model_paths()
        model_path = model_path or base
        if args.adapters is None:
            if not files:
                raise FileNotFoundError("no default adapter pool found; pass --adapters")
            adapters = files
    adapter = next((a for a in adapters if a.stem == args.adapter), None) if args.adapter else adapters[0]
    if adapter is None:
        raise ValueError(f"--adapter {args.adapter!r} is not among the adapters")
    parallel = args.parallel or max(args.clients)
    # A terminated benchmark still stops the servers it started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import logo_cpp

    probe_model = logo_cpp.Model(model_path, n_ctx=64, n_threads=1)
    # Every end-of-generation token (llama.cpp stops at any of them), banned for llama_cpp.server by a logit bias.
    eog = probe_model._end_of_generation_tokens().tolist()
    del probe_model
    logs = args.out / "serve-logs"
    logo_port, llama_port = _free_port(), _free_port()
    logo_cmd = [sys.executable, "-m", "logo_cpp.cli", "serve", "--model", str(model_path), "--adapters",
                *map(str, adapters), "--port", str(logo_port), "--parallel", str(parallel), "--ctx-size", str(args.ctx_size),
                "--threads", str(args.threads), "--queue", str(max(args.clients)), "--log-level", "warning"]
    if args.k is not None:
        logo_cmd += ["--k", str(args.k)]
    llama_cmd = [sys.executable, "-m", "logo_cpp.bench.llama_server", "--model", str(model_path),
                 "--lora_path", str(adapter), "--port", str(llama_port), "--n_ctx", str(args.ctx_size),
                 "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--flash_attn", "true",
                 # By default a new request cuts the one being streamed short; every request must run to the end.
                 "--interrupt_requests", "false", "--verbose", "false"]
    load_before = _load()
    servers = {"logo-cpp": ServerProcess("logo-cpp serve", logo_cmd, logo_port, logs / "logo-cpp.log"),
               "llama_cpp.server": ServerProcess("llama_cpp.server", llama_cmd, llama_port, logs / "llama_cpp.log")}
    try:
        servers["logo-cpp"].wait_ready("/health")
        servers["llama_cpp.server"].wait_ready("/v1/models")
        # Exactly max_tokens per request on both: end of text is ignored (ours) or forbidden by a logit bias.
        common_body = {"max_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95, "seed": 1}
        bodies = {
            "logo-cpp": [{**common_body, "model": "logo", "prompt": p, "ignore_eos": True,
                          "stream_options": {"include_usage": True}} for p in PROMPTS],
            "llama_cpp.server": [{**common_body, "prompt": p, "logit_bias": {str(t): -100.0 for t in eog}} for p in PROMPTS],
        }
        for name, server in servers.items():  # warm-up, not measured
            stream_completion(server.port, bodies[name][0])
        samples: dict = {name: {c: [] for c in args.clients} for name in servers}
        for rep in range(args.reps):
            order = list(servers) if rep % 2 == 0 else list(reversed(servers))
            for clients in args.clients:
                for name in order:
                    out = run_load(servers[name].port, bodies[name], clients, args.requests_per_client)
                    samples[name][clients].append(out)
                    print(f"rep {rep + 1}/{args.reps}  {name:<17} {clients:>2} clients: "
                          f"{out['tokens_per_second']:7.1f} tok/s, TTFT p50 {out['ttft_p50'] * 1000:6.0f} ms, "
                          f"p95 {out['ttft_p95'] * 1000:6.0f} ms", flush=True)
            # Written after every repetition: a run cut short (a time limit) still leaves its complete ones.
            report = summarize(samples, args, model_path, adapters, adapter, parallel, reps_done=rep + 1)
            report["load"] = f"{load_before} / {_load()}"
            common.write_json(args.out / "serve.json", report)
            (args.out / "serve.md").write_text(markdown(report))
    finally:
        for server in servers.values():
            server.stop()
    print(markdown(report))


def summarize(samples, args, model_path, adapters, adapter, parallel, reps_done=None) -> dict:
    rows = []
    for clients in args.clients:
        row = {"clients": clients}
        for name in samples:
            runs = samples[name][clients]
            row[name] = {key: common.median([r[key] for r in runs])
                         for key in ("tokens_per_second", "ttft_p50", "ttft_p95", "tokens_per_request")}
        row["throughput_ratio"] = row["logo-cpp"]["tokens_per_second"] / row["llama_cpp.server"]["tokens_per_second"]
        rows.append(row)
    routed = [r for runs in samples["logo-cpp"].values() for run in runs for r in run["routings"]]
    distinct = {tuple(a["name"] for a in r["adapters"]) for r in routed}
    k = routed[0].get("k") if routed else None
    return {
        "machine": common.machine_info(args.threads),
        "model": Path(model_path).name, "pool": sorted(a.stem for a in adapters), "pool_size": len(adapters),
        "llama_cpp_server_adapter": adapter.stem, "k": k, "distinct_selections": len(distinct),
        "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
        "reps": args.reps if reps_done is None else reps_done,
        "parallel": parallel, "ctx_size": args.ctx_size, "rows": rows,
        "command": "logo-cpp bench serve " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "serve"] else sys.argv[1:]),
    }


def markdown(report: dict) -> str:
    lines = [
        "# logo-cpp serve vs llama_cpp.server",
        "",
        f"{report['model']}; logo-cpp routes every request with LoGo over {report['pool_size']} adapters "
        f"(k={report['k']}, {report['distinct_selections']} distinct selections seen) on {report['parallel']} slots; "
        f"llama_cpp.server serves the same base with one adapter ({report['llama_cpp_server_adapter']}). Streamed "
        f"completions of {report['max_tokens']} tokens, {report['requests_per_client']} per client, one after another; "
        f"medians of {report['reps']} repetitions, servers alternating.",
        "",
        "| clients | logo-cpp tok/s | llama_cpp.server tok/s | ratio | logo-cpp TTFT p50 / p95 (ms) | "
        "llama_cpp.server TTFT p50 / p95 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ours, theirs = row["logo-cpp"], row["llama_cpp.server"]
        lines.append(f"| {row['clients']} | {ours['tokens_per_second']:.1f} | {theirs['tokens_per_second']:.1f} | "
                     f"{row['throughput_ratio']:.2f}x | {ours['ttft_p50'] * 1000:.0f} / {ours['ttft_p95'] * 1000:.0f} | "
                     f"{theirs['ttft_p50'] * 1000:.0f} / {theirs['ttft_p95'] * 1000:.0f} |")
    per_request = {name: [row[name]["tokens_per_request"] for row in report["rows"]] for name in report["rows"][0]
                   if isinstance(report["rows"][0][name], dict)}
    lines += ["", "Tokens generated per request (must be the requested count on both): " +
              "; ".join(f"{name} {min(v):.1f}-{max(v):.1f}" for name, v in per_request.items()) + ".",
              "", common.describe_machine(report["machine"]) + f" Load average before/after: {report['load']}.",
              "", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
