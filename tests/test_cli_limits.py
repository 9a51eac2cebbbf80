"""What the command line says when a limit, not the user's request, shaped the run: an answer cut because the
context filled (finish_reason "length" either way, as OpenAI reports both), a chat whose default reply length
does not fit a small --ctx, and seeds over the Python API's whole range [0, 2**64)."""

import json
import re
import subprocess
import sys

import pytest

import logo_cpp
from logo_cpp.cli import context_full_note


def cli(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, input=stdin)


@pytest.fixture(scope="module")
def model_file(model_dir):
    return model_dir / "llama-f32.gguf"


def _prompt_tokens(model_file, prompt):
    m = logo_cpp.Model(model_file, n_ctx=64, n_threads=1)
    try:
        return len(m.tokenize(prompt))
    finally:
        m.close()


def test_run_says_when_the_context_cut_the_answer(model_file, adapter_dir, tmp_path):
    # Room for 3 generated tokens beside the prompt, 50 asked. --json (unchanged: the Completion's finish_reason
    # and timings) is the oracle: "length" with fewer tokens than -n. The note must name --ctx, in both modes, and
    # appear only when the context cut the answer.
    prompt = "Hello world"
    ctx = _prompt_tokens(model_file, prompt) + 3
    run = ["run", "-m", model_file, "-a", adapter_dir / "math.gguf", "-p", prompt, "--ctx", ctx, "--threads", 1]
    json_out = cli(*run, "-n", 50, "--json", cwd=tmp_path)
    assert json_out.returncode == 0, json_out.stderr
    data = json.loads(json_out.stdout)
    n = data["timings"]["n_generated"]
    assert data["finish_reason"] == "length" and n < 50  # the context, not -n, ended it
    streamed = cli(*run, "-n", 50, cwd=tmp_path)
    assert streamed.returncode == 0, streamed.stderr
    for out in (json_out, streamed):
        notes = [line for line in out.stderr.splitlines() if "context" in line and "--ctx" in line]
        assert len(notes) == 1 and f"after {n} tokens" in notes[0] and f"of {ctx} tokens" in notes[0], out.stderr
    for mode in (["--json"], []):  # -n reached first: no note
        out = cli(*run, "-n", 1, *mode, cwd=tmp_path)
        assert out.returncode == 0 and "--ctx" not in out.stderr, out.stderr


def test_context_full_note_tells_the_two_lengths_apart():
    from logo_cpp.model import Completion, Timings

    def completion(n, reason):
        fields = {name: 0 for name in Timings.__dataclass_fields__}
        return Completion(text="", tokens=[1] * n, finish_reason=reason, timings=Timings(**dict(fields, n_prompt=7)))

    assert context_full_note(completion(3, "length"), 50, 10) is not None
    assert context_full_note(completion(50, "length"), 50, 10) is None   # max_tokens reached
    assert context_full_note(completion(0, "length"), 0, 10) is None     # -n 0
    assert context_full_note(completion(3, "eos"), 50, 10) is None
    assert context_full_note(completion(3, "stop"), 50, 10) is None
    assert context_full_note(None, 50, 10) is None                       # a stream stopped before its end


def test_chat_caps_its_default_reply_to_a_small_context_and_refuses_a_given_one(model_file, tmp_path):
    chat = ["chat", "-m", model_file, "--no-adapters", "--threads", 1, "--ctx", 128]
    out = cli(*chat, cwd=tmp_path, stdin="Hello\n/quit\n")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if "capped" in line]
    assert len(notes) == 1 and "64 tokens" in notes[0] and "--ctx" in notes[0] and "--max-tokens" in notes[0], out.stderr
    # The turn was answered, within the cap (the synthetic model rarely ends a turn by itself).
    summary = [line for line in out.stdout.splitlines() if "; prompt" in line]
    assert len(summary) == 1 and ("no reply" in summary[0] or int(summary[0].split("(")[1].split()[0]) <= 64), out.stdout
    out = cli(*chat, "--max-tokens", 256, cwd=tmp_path, stdin="Hello\n/quit\n")
    assert out.returncode == 2 and "leaves no room" in out.stderr, out.stderr
    out = cli("chat", "-m", model_file, "--no-adapters", "--threads", 1, cwd=tmp_path, stdin="/quit\n")
    assert out.returncode == 0 and "capped" not in out.stderr, out.stderr  # the default context holds 256


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["route", "-p", "hi"], ["chat"], ["demo"], ["eval"]])
def test_every_seed_flag_takes_the_python_apis_range(command):
    # Model.generate takes seeds in [0, 2**64) (the core's uint64); so does every --seed, and nothing beyond.
    from logo_cpp.cli import build_parser

    parser = build_parser()
    for good in (0, 2**31, 2**63, 2**64 - 1):
        assert parser.parse_args([*command, "--seed", str(good)]).seed == good
    for bad in ("-1", str(2**64), "1.5"):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--seed", bad])


def test_the_largest_seed_reaches_generation_as_the_python_api_gets_it(model_file, adapter_dir, tmp_path):
    # Oracle: Model.generate with the same seed and the adapter the CLI routed to (a one-adapter pool: weight 1).
    seed = 2**64 - 1
    out = cli("run", "-m", model_file, "-a", adapter_dir / "math.gguf", "-p", "Hello", "-n", 6, "--temperature", 1,
              "--seed", seed, "--threads", 1, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    m = logo_cpp.Model(model_file, n_threads=1)
    pool = logo_cpp.AdapterPool(m, [adapter_dir / "math.gguf"])
    want = m.generate("Hello", max_tokens=6, temperature=1, seed=seed, adapters={pool.names[0]: 1.0})
    assert json.loads(out.stdout)["text"] == want.text


def test_serve_refuses_a_rerank_at_another_k_before_loading_anything(tmp_path):
    # The model path does not exist: a check made after loading would report that instead.
    missing = tmp_path / "absent.gguf"
    for flags, said in ((["--k", "3"], "got --k 3"), (["--calibration", "none"], "--calibration none")):
        out = cli("serve", "--model", missing, "--port", 0, "--rerank", *flags, cwd=tmp_path)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert "--rerank applies to routing at k = 1" in lines[0] and said in lines[0], out.stderr
    out = cli("serve", "--model", missing, "--port", 0, "--rerank", cwd=tmp_path)  # valid flags: the model's error
    assert out.returncode == 2 and "absent.gguf" in out.stderr, out.stderr


def test_serve_names_its_slots_when_the_context_cannot_fit(model_file, tmp_path):
    # --ctx-size far beyond memory: the model's own one-sequence cache fails first, but the server would hold
    # --parallel more: the error counts them all (9 = 8 slots + the model's own) and names both flags.
    out = cli("serve", "--model", model_file, "--port", 0, "--threads", 1, "--ctx-size", 2_000_000_000,
              "--parallel", 8, cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "--ctx-size 2000000000 with --parallel 8" in lines[0] and "9 sequences" in lines[0], lines[0]
    assert "1 sequences" not in lines[0]
    total, per = re.search(r"need about (\d+) MiB.*\((\d+) MiB each\)", lines[0]).groups()
    assert int(total) == 9 * int(per)
