"""Step times of chunked prefill (README, "Chunked prefill"): on the default model, one greedy request runs while a
1900-token prompt ('word ' * 1900) is prefilled with ContinuousBatch.begin, for each chunk size; prints the median
decode-only step, the median step with a prefill chunk (the delay the running stream sees per token), and the whole
prefill's time over its steps vs start() of the same prompt (the long request's own cost of chunking), measured in
the same run so the ratios hold on a busy machine. python tools/prefill_chunk_steps.py [--threads 1] [chunks]"""

import argparse
import statistics
import time

import logo_cpp
from logo_cpp import _core, default_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chunks", nargs="*", type=int, default=[64, 128, 256, 512])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    model = logo_cpp.Model(default_model.base_model_path(), n_ctx=2048, n_threads=a.threads)
    long = model.tokenize("word " * 1900)
    running = model.tokenize("Count:")
    print(f"prompt {len(long)} tokens, --threads {a.threads}")
    print("chunk  decode step ms  step with chunk ms  prefill s (chunked)  prefill s (start)  ratio")
    for chunk in a.chunks:
        batch = _core.ContinuousBatch(model._core, n_ctx=2048, n_slots=4, prefill_chunk=chunk)
        t0 = time.perf_counter()
        batch.start(99, long, max_tokens=1, temperature=0.0)  # the whole prompt at once, as before
        whole = time.perf_counter() - t0
        batch.start(1, running, max_tokens=1500, temperature=0.0, ignore_eos=True)
        plain = []
        for _ in range(10):
            t0 = time.perf_counter()
            batch.step()
            plain.append(time.perf_counter() - t0)
        batch.begin(2, long, max_tokens=1, temperature=0.0)
        with_chunk, t_begin = [], time.perf_counter()
        while batch.prefilling:
            t0 = time.perf_counter()
            batch.step()
            with_chunk.append(time.perf_counter() - t0)
        chunked = time.perf_counter() - t_begin
        print(f"{chunk:5d}  {1000 * statistics.median(plain):14.1f}  {1000 * statistics.median(with_chunk):18.1f}  "
              f"{chunked:19.2f}  {whole:17.2f}  {chunked / whole:5.2f}", flush=True)


if __name__ == "__main__":
    main()
