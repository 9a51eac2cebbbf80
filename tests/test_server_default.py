"""`logo-cpp serve` on the real default model (SmolLM2-135M-Instruct, Q4_1): chat answers through the server
equal the Python API's, alone and with concurrent requests routed differently."""

from __future__ import annotations

import concurrent.futures

import pytest

import logo_cpp
from logo_cpp import synthetic
from logo_cpp.server.main import default_model_paths

from conftest import THREADS
from server_util import client, running_server

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Write one sentence about the sea.",
             "What is 2 + 2?"]


@pytest.fixture(scope="module")
def default_files(tmp_path_factory):
    """The default base model and a pool for it: the shipped pool when it exists, else rank-8 synthetic adapters
    (for this test only the mixture's arithmetic matters, not what the adapters learned)."""
    base, pool = default_model_paths()
    if not pool:
        pool = tmp_path_factory.mktemp("smol-pool")
        spec = synthetic.spec_from_gguf(base)
        for i in range(4):
            synthetic.write_adapter(pool / f"task{i}.gguf", spec, targets=("attn_q", "attn_v"), rank=8, alpha=8.0,
                                    seed=40 + i)
    return base, pool


def test_chat_through_the_server_equals_the_python_api(default_files):
    base, pool_dir = default_files
    model = logo_cpp.Model(base, n_ctx=512, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, pool_dir)
    names = pool.names[:2]
    mixtures = [None, {names[0]: 1.0}, {names[0]: 0.6, names[1]: 0.4}, "logo"]
    expected = []
    for question, mixture in zip(QUESTIONS, mixtures):
        messages = [{"role": "user", "content": question}]
        if mixture == "logo":
            mixture = logo_cpp.LoGo(model, pool, k=2).route(question).as_dict()
        expected.append(model.chat(messages, max_tokens=16, temperature=0.0, adapters=mixture).text)

    def ask(i):
        extra = {} if mixtures[i] == "logo" else {"adapters": mixtures[i] or "none"}
        r = client(bg).chat.completions.create(model="logo", messages=[{"role": "user", "content": QUESTIONS[i]}],
                                               max_tokens=16, temperature=0, extra_body=extra)
        return r.choices[0].message.content

    with running_server(base, pool_dir, n_slots=4, n_ctx=512, k=2) as bg:
        alone = [ask(i) for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            together = list(ex.map(ask, range(4)))
    assert alone == expected
    assert together == expected
    assert any(e.strip() for e in expected)
