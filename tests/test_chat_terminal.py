"""The chat terminal's Ctrl-C handling, in process with a scripted session (no model): a Ctrl-C stops an
answer or drops a line and never ends the chat, also when it lands between turns."""

import io
import os
import signal

import pytest

from logo_cpp.chat import Terminal, Turn


class ScriptedSession:
    """Just what Terminal uses of a ChatSession: reply() streams pieces and sets ``last``. ``during`` runs
    before each piece after the first, ``after`` when the stream ends for any reason."""

    pool = None

    def __init__(self, during=None, after=None):
        self.during, self.after, self.last = during, after, None

    def reply(self, text):
        self.last = turn = Turn(n_prompt=len(text.split()))
        try:
            for i in range(5):
                if i and self.during:
                    self.during(i)
                turn.n_generated += 1
                yield f" w{i}"
        except GeneratorExit:
            turn.stopped = True
            raise
        finally:
            if self.after:
                self.after()


@pytest.fixture
def python_sigint():
    # Whatever started the tests (a background job ignores SIGINT), the chat sees Python's default handler,
    # as in a terminal; restored afterwards.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def run(monkeypatch, capsys, session, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = Terminal(session, "banner").loop()
    return rc, capsys.readouterr().out


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_the_answer_and_one_landing_after_it_does_not_end_the_chat(python_sigint, monkeypatch, capsys):
    # The first Ctrl-C stops the answer at its second piece; the second lands while the stopped stream is
    # being closed, after the turn has had its one KeyboardInterrupt. Python's own handler would raise it
    # wherever the interpreter checks next, in the worst case at the loop's jump back outside the try, which
    # ended the chat; the terminal keeps it and drops the next line instead, with the hint.
    fired = []

    def during(i):
        if i == 2:
            fired.append(1)
            ctrl_c()

    def after():
        if fired == [1]:
            fired.append(2)
            ctrl_c()

    rc, out = run(monkeypatch, capsys, ScriptedSession(during, after), ["tell me", "/quit"])
    assert rc == 0 and fired == [1, 2], out
    assert "(stopped; 2 tokens" in out
    assert out.count("(Ctrl-D or /quit leaves)") == 1, out
    assert out.index("(stopped; ") < out.index("(Ctrl-D or /quit leaves)")


def test_ctrl_c_at_the_prompt_drops_the_line_and_the_chat_goes_on(python_sigint, monkeypatch, capsys):
    class Interrupted(io.StringIO):
        calls = 0

        def readline(self, *args):
            Interrupted.calls += 1
            if Interrupted.calls == 1:
                ctrl_c()
            return super().readline(*args)

    monkeypatch.setattr("sys.stdin", Interrupted("/adapters\n/quit\n"))
    rc = Terminal(ScriptedSession(), "banner").loop()
    out = capsys.readouterr().out
    assert rc == 0 and "(Ctrl-D or /quit leaves)" in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the chat's handler is gone


def test_an_answer_that_runs_to_its_end_has_a_summary_and_no_hint(python_sigint, monkeypatch, capsys):
    rc, out = run(monkeypatch, capsys, ScriptedSession(), ["tell me", "/quit"])
    assert rc == 0 and " w0 w1 w2 w3 w4" in out and "(5 tokens" in out and "leaves" not in out


def test_piped_input_is_read_only_once_the_loop_runs(python_sigint, monkeypatch, capsys):
    # The stdin pump is set up in __init__ (no attribute appears later) but starts in loop(), under the chat's
    # SIGINT handler: a Terminal that has not started reads nothing.
    stdin = io.StringIO("tell me\n/quit\n")
    monkeypatch.setattr("sys.stdin", stdin)
    terminal = Terminal(ScriptedSession(), "banner")
    assert vars(terminal).keys() >= {"_lines", "_armed", "_pending_interrupt"} and terminal._lines is None
    assert stdin.tell() == 0
    assert terminal.loop() == 0 and " w0 w1 w2 w3 w4" in capsys.readouterr().out
    assert stdin.tell() == len("tell me\n/quit\n")


def test_slash_k_says_when_the_pool_caps_it_and_keeps_a_reranking_router_at_one(python_sigint, monkeypatch, capsys):
    from types import SimpleNamespace

    session = ScriptedSession()
    session.pool = ["capital", "plural", "sentiment"]
    session.router = SimpleNamespace(k=1, rerank_margin=None)
    rc, out = run(monkeypatch, capsys, session, ["/k 10", "/k 2"])
    assert rc == 0 and "(routing to the top 3 adapters from now on: the pool has 3, not 10)" in out
    assert "(routing to the top 2 adapters from now on)" in out and session.router.k == 2
    session.router = SimpleNamespace(k=1, rerank_margin=0.5)
    rc, out = run(monkeypatch, capsys, session, ["/k 3", "/k 1"])
    assert "--rerank chooses one adapter: k stays 1" in out and session.router.k == 1
