"""Measures what `serve --prefill-chunk` trades (README, "Chunked prefill"): the newcomer review's experiment on the
default model at --threads 1 --parallel 4. A greedy stream ("Count:", 250 tokens) runs; a completion of
'word ' * 1900 is sent, then a short one 1 s later. Per chunk size: the running stream's median and largest gap
between two chunks while the long request is served, the long request's latency (LoGo probe + prefill + 1 token,
and its probe_ms), and the short request's latency. Chunk 4096 > the prompt: the whole prompt at once (the old
behaviour). Run it alone (a busy machine inflates every figure): python tools/prefill_chunk_latency.py [chunks]"""

import argparse
import concurrent.futures
import dataclasses
import statistics
import sys
import time

from openai import OpenAI

from logo_cpp.server import main as serve_main
from logo_cpp.server.app import Server, build_app


def one(loaded, chunk):
    config = dataclasses.replace(loaded.server.config, prefill_chunk=chunk)
    server = Server(loaded.model, loaded.pool, config)
    bg = serve_main.start_in_thread(build_app(server), server)
    client = OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=0, timeout=600)
    arrivals = []
    try:
        def running():
            for c in client.completions.create(model="logo", prompt="Count:", max_tokens=250, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True}):
                if c.choices and c.choices[0].text:
                    arrivals.append(time.perf_counter())

        def timed(prompt, max_tokens):
            t0 = time.perf_counter()
            r = client.completions.with_raw_response.create(model="logo", prompt=prompt, max_tokens=max_tokens,
                                                            temperature=0)
            body = r.parse()
            routing = body.model_extra.get("routing") or {}
            return t0, time.perf_counter() - t0, routing.get("probe_ms")

        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            run = ex.submit(running)
            while len(arrivals) < 20:
                time.sleep(0.01)
            long = ex.submit(timed, "word " * 1900, 1)
            time.sleep(1.0)
            short = ex.submit(timed, "Hello", 8)
            (t_long, long_s, probe_ms), (_, short_s, _) = long.result(), short.result()
            run.result()
    finally:
        bg.stop()
        server.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:]) if b > t_long]
    during = [g for g, b in zip(gaps, arrivals[1:]) if b <= t_long + long_s + 0.5] or gaps
    before = [b - a for a, b in zip(arrivals[:20], arrivals[1:20])]
    return dict(chunk=chunk, gap_before_ms=1000 * statistics.median(before), gap_median_ms=1000 * statistics.median(during),
                gap_max_s=max(during), long_s=long_s, probe_ms=probe_ms, short_s=short_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chunks", nargs="*", type=int, default=[64, 128, 256, 512, 4096])
    a = p.parse_args(argv)
    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    args = parser.parse_args(["--threads", "1", "--parallel", "4"])
    loaded = serve_main.load(args)
    loaded.server.close()
    print("chunk  gap before ms  gap median ms  largest gap s  long request s  probe ms  short request s", flush=True)
    for chunk in a.chunks:
        r = one(loaded, chunk)
        print(f"{r['chunk']:5d}  {r['gap_before_ms']:13.1f}  {r['gap_median_ms']:13.1f}  {r['gap_max_s']:13.2f}  "
              f"{r['long_s']:14.2f}  {r['probe_ms']:8.0f}  {r['short_s']:15.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
