"""The confidence rerank in `logo-cpp serve --rerank` and `logo-cpp chat --rerank`: the same choice as the Python API's
LoGo(k=1, rerank_margin=...) on the same prompt, the choice reported (the server's routing field, chat's routing
line and /route), the answer generated with the kept adapter; bad combinations named."""

from __future__ import annotations

import pytest

import logo_cpp
from logo_cpp import cli
from logo_cpp.chat import ChatSession, rerank_note, routing_detail
from logo_cpp.rerank import DEFAULT_RERANK_MARGIN
from logo_cpp.server.app import Server, ServerConfig

from conftest import THREADS
from server_util import client, running_server

openai = pytest.importorskip("openai")

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols", "a b c d e f g", "zzz yyy xxx"]
ALWAYS = 1e6  # a margin every top two is under: every request is reranked


@pytest.fixture(scope="module")
def reference(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in NAMES])
    return model, pool


@pytest.mark.parametrize("stream", [False, True])
def test_server_rerank_equals_the_python_api(model_dir, adapter_dir, reference, stream):
    model, pool = reference
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=ALWAYS)
    with running_server(model_dir / "llama-f32.gguf", [adapter_dir / f"{n}.gguf" for n in NAMES], n_slots=2, k=1,
                        rerank_margin=ALWAYS, warm_up=False) as bg:
        c = client(bg)
        changed = 0
        for prompt in PROMPTS:
            expected = router.generate(prompt, max_tokens=8, temperature=0)
            if not stream:
                r = c.completions.create(model="logo", prompt=prompt, max_tokens=8, temperature=0)
                text, routing = r.choices[0].text, r.model_extra["routing"]
            else:
                text, routing = "", None
                for chunk in c.completions.create(model="logo", prompt=prompt, max_tokens=8, temperature=0,
                                                  stream=True):
                    routing = routing or chunk.model_extra.get("routing")
                    text += "".join(ch.text for ch in chunk.choices)
            want = expected.routing.rerank
            got = routing["rerank"]
            assert got["candidates"] == want["candidates"] and got["chosen"] == want["chosen"] and got["reranked"]
            assert got["mean_logprobs"] == pytest.approx(want["mean_logprobs"], abs=1e-3)
            assert got["rerank_ms"] > 0
            assert [a["name"] for a in routing["adapters"]] == [want["chosen"]]
            assert text == expected.text
            changed += want["chosen"] != want["candidates"][0]
        assert changed, "some prompt keeps the second candidate (else only one side is checked)"
        # A request routed at another k is not reranked (the rerank applies to k = 1).
        r = c.completions.create(model="logo", prompt=PROMPTS[0], max_tokens=2, extra_body={"logo": {"k": 2}})
        assert "rerank" not in r.model_extra["routing"] and len(r.model_extra["routing"]["adapters"]) == 2


def test_server_without_rerank_reports_none(model_dir, adapter_dir):
    with running_server(model_dir / "llama-f32.gguf", [adapter_dir / "math.gguf", adapter_dir / "sql.gguf"], k=1,
                        warm_up=False) as bg:
        r = client(bg).completions.create(model="logo", prompt=PROMPTS[0], max_tokens=2)
        assert "rerank" not in r.model_extra["routing"]


@pytest.mark.parametrize("config, message", [
    (dict(k=2, rerank_margin=0.5), "--rerank applies to routing at k = 1"),
    (dict(k=1, calibration="none", rerank_margin=0.5), "calibration 'none'"),
    (dict(k=1, rerank_margin=0.0), "rerank_margin must be a finite number > 0"),
])
def test_server_rerank_config_is_checked(reference, config, message):
    model, pool = reference
    with pytest.raises(ValueError, match=message):
        Server(model, pool, ServerConfig(warm_up=False, **config))


def test_a_reranking_router_keeps_k_1(reference):
    """LoGo(k=3, rerank_margin=...) fails at construction, and so does setting k later (the chat's /k): it failed
    nowhere, and generate() reranked a k = 3 routing's top two."""
    model, pool = reference
    with pytest.raises(ValueError, match=r"rerank_margin applies to k = 1 only \(k is 3\)"):
        logo_cpp.LoGo(model, pool, k=3, rerank_margin=0.5)
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=0.5)
    with pytest.raises(ValueError, match=r"rerank_margin applies to k = 1 only \(k is 3\)"):
        router.k = 3
    with pytest.raises(ValueError, match="k must be an integer"):
        router.k = 0
    assert router.k == 1
    plain = logo_cpp.LoGo(model, pool, k=1)
    plain.k = 3
    assert len(plain.route(PROMPTS[0]).names) == 3


def test_chat_rerank_reports_its_choice_and_answers_with_it(reference):
    model, pool = reference
    router = logo_cpp.LoGo(model, pool, k=1, rerank_margin=ALWAYS)
    session = ChatSession(model, pool, router, max_tokens=8, temperature=0.0)
    text = "".join(session.reply(PROMPTS[1]))
    routing = session.last.routing
    info = routing.rerank
    assert info["reranked"] and routing.names == [info["chosen"]]
    # The same choice as LoGo.generate on the templated prompt, probed on the message (chat's default route-on).
    prompt = model.tokenize(model.apply_chat_template([{"role": "user", "content": PROMPTS[1]}]), parse_special=True)
    alone = router.route(PROMPTS[1])
    from logo_cpp.rerank import rerank

    rerank(model, pool, prompt, alone, ALWAYS, 8, None, False)
    assert alone.rerank["chosen"] == info["chosen"] and alone.rerank["candidates"] == info["candidates"]
    assert text == model.generate(prompt, max_tokens=8, temperature=0, adapters={info["chosen"]: 1.0}).text
    note = rerank_note(routing)
    other = [n for n in info["candidates"] if n != info["chosen"]][0]
    assert note.startswith(f"rerank: {info['chosen']} over {other} (mean log-prob") and note.endswith(" ms")
    assert note in routing_detail(routing, pool)
    far = ChatSession(model, pool, logo_cpp.LoGo(model, pool, k=1, rerank_margin=1e-9), max_tokens=4, temperature=0.0)
    "".join(far.reply(PROMPTS[1]))
    assert rerank_note(far.last.routing).endswith("apart, not close")


def test_chat_and_serve_flags():
    parser = cli.build_parser()
    for command in (["chat"], ["serve"]):
        assert parser.parse_args(command + ["--rerank"]).rerank == DEFAULT_RERANK_MARGIN
        assert parser.parse_args(command + ["--rerank", "0.25"]).rerank == 0.25
        assert parser.parse_args(command).rerank is None
        with pytest.raises(SystemExit):
            parser.parse_args(command + ["--rerank", "-1"])


def test_chat_rerank_needs_k1_and_adapters(model_dir, adapter_dir, capsys):
    base = ["chat", "-m", str(model_dir / "llama-f32.gguf"), "--threads", str(THREADS), "--rerank"]
    assert cli.main(base + ["-a", str(adapter_dir / "math.gguf"), str(adapter_dir / "sql.gguf"), "--k", "2"]) != 0
    assert "--rerank applies to --k 1 (got --k 2)" in capsys.readouterr().err
    assert cli.main(base) != 0
    assert "--rerank needs adapters" in capsys.readouterr().err
