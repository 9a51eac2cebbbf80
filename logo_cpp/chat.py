"""`logo-cpp chat`: a terminal conversation with the model's chat template, routed by LoGo on every turn.

ChatSession holds the conversation and does the work (routing, fitting the context, streaming a reply);
run_chat is the terminal around it: a prompt with line editing on a terminal, one message per line from a
pipe, slash commands, Ctrl-C to stop an answer, Ctrl-D (end of input) to leave.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .model import check_fold

DEFAULT_MAX_TOKENS = 256
# What the router reads on a chat turn, one vocabulary for `logo-cpp chat --route-on` and `logo-cpp serve
# --chat-route-on`: "last-user", the last user message as raw text, or "conversation", the templated conversation
# up to the assistant's turn. Measured through the chat template on held-out items (benchmarks/chat_routing.py,
# docs/server/chat-routing.md, where "prompt" is the conversation): one adapter answers far better than mixtures of
# the pool on both pools; with the default (calibrated) router the last user message ranks the own adapter first
# more often (0.903 vs 0.736 on the final pool's 72 chat items, paired 13 vs 1) and answers better (0.653 vs 0.542).
# The conversation led only on the pilot pool with the paper's raw signal. `logo-cpp serve` has the same default.
ROUTE_ON = ("last-user", "conversation")
# The names each command used before they shared one vocabulary (chat: "message"; serve: "prompt"), still accepted
# so scripts written for them keep working.
ROUTE_ON_ALIASES = {"message": "last-user", "prompt": "conversation"}
DEFAULT_ROUTE_ON = "last-user"
DEFAULT_K = 1

HELP = """commands:
  /help          this list
  /reset         forget the conversation (the system message stays)
  /route         the last turn's routing in full: every adapter's signal, the chosen mixture
  /k N           route to the N adapters with the highest signal from now on
  /adapters      the adapters in the pool
  /system TEXT   set the system message (and reset)
  /quit          leave (so does Ctrl-D); Ctrl-C stops an answer
  //text         send a message that starts with '/'"""


def route_on_choice(value: str, what: str = "route_on") -> str:
    """The ROUTE_ON name of `value`: itself, or the name an alias in ROUTE_ON_ALIASES stands for. Raises
    ValueError naming `what` (the setting) and the choices for anything else."""
    name = ROUTE_ON_ALIASES.get(value, value) if isinstance(value, str) else value
    if name not in ROUTE_ON:
        raise ValueError(f"{what} must be one of {', '.join(ROUTE_ON)} (or the older "
                         f"{', '.join(f'{a} = {n}' for a, n in ROUTE_ON_ALIASES.items())}), got {value!r}")
    return name


def add_route_on_argument(p, flag: str, what: str) -> None:
    """`flag` (chat's --route-on, serve's --chat-route-on) taking ROUTE_ON or an alias; parses to the ROUTE_ON
    name, and refuses anything else with argparse's own 'invalid choice' listing ROUTE_ON."""
    aliases = ", ".join(f"{a} = {n}" for a, n in ROUTE_ON_ALIASES.items())
    p.add_argument(flag, default=DEFAULT_ROUTE_ON, choices=ROUTE_ON, type=lambda text: ROUTE_ON_ALIASES.get(text, text),
                   help=f"what the router reads {what}: the last user message (last-user, the default: it routes "
                        f"better with the default router, docs/server/chat-routing.md) or the whole templated "
                        f"conversation (conversation); the older names {aliases} are still accepted")


@dataclass
class Turn:
    """What one reply cost and which adapters served it."""

    routing: object = None          # logo_cpp.Routing, or None without a pool
    dropped_messages: int = 0       # oldest messages left out to fit the context
    n_prompt: int = 0
    n_generated: int = 0
    first_token_seconds: float = 0.0
    seconds: float = 0.0
    stopped: bool = False           # interrupted by the user


@dataclass
class ChatSession:
    """A conversation over ``model`` with adapters from ``pool`` (None: the base model alone).

    Every user turn is routed by ``router`` (a logo_cpp Router) on the input ``route_on`` names; the reply
    is generated with the chosen mixture and the model's chat template. When the conversation outgrows the
    context (``model.n_ctx`` minus ``max_tokens`` kept for the reply), the oldest turns are left out of the
    prompt and reported in Turn.dropped_messages; a message too long on its own raises ContextOverflowError
    and is not kept.
    """

    model: object
    pool: object = None
    router: object = None
    system: Optional[str] = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.2
    top_p: float = 0.9
    seed: Optional[int] = None
    route_on: str = DEFAULT_ROUTE_ON
    fold: str = "exact"                             # Model.generate's fold (FOLD_MODES); "requantize" is lossy
    messages: list = field(default_factory=list)   # user and assistant turns, oldest first
    last: Optional[Turn] = None

    def __post_init__(self):
        self.route_on = route_on_choice(self.route_on)
        check_fold(self.fold)
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        # The sampling settings are checked now, not at the first reply, so a bad flag stops the chat at once.
        self.model._sampling_kwargs(self.max_tokens, self.temperature, 40, self.top_p, 0.05, self.seed, None, False)
        if self.max_tokens >= self.model.n_ctx:
            raise ValueError(f"max_tokens ({self.max_tokens}) leaves no room for the conversation in a context "
                             f"of {self.model.n_ctx} tokens")

    def reset(self) -> None:
        self.messages.clear()
        self.last = None

    def _conversation(self, messages: list) -> list:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def fit(self, messages: list) -> tuple[list[int], int]:
        """Prompt tokens of the templated conversation that fits beside a reply of max_tokens; drops the
        oldest messages (whole user/assistant turns) first. Returns (tokens, number of messages dropped)."""
        from . import ContextOverflowError

        budget = self.model.n_ctx - self.max_tokens
        dropped = 0
        while True:
            # Contents are plain text (Model.chat_tokens): a "<|im_end|>" typed in the chat cannot end the turn.
            tokens = self.model.chat_tokens(self._conversation(messages[dropped:]))
            if len(tokens) <= budget:
                return tokens, dropped
            if len(messages) - dropped <= 1:
                raise ContextOverflowError(
                    f"the message is too long: {len(tokens)} tokens with the template"
                    f"{' and the system message' if self.system else ''}, and the context holds {budget} beside "
                    f"a reply of up to {self.max_tokens} (start with a larger --ctx or a smaller --max-tokens)")
            # Drop a user message and the assistant reply after it, so the history still alternates.
            dropped += 2 if len(messages) - dropped > 2 and messages[dropped + 1]["role"] == "assistant" else 1

    def route_tokens(self, messages: list) -> list[int]:
        """The token ids the router reads for this turn (see ROUTE_ON), contents as plain text. The probe reads at
        most the context's worth of their end (the last token's state is the probe)."""
        if self.route_on == "last-user":
            ids = self.model.tokenize(messages[-1]["content"], add_special=True, parse_special=False)
        else:
            ids = self.model.chat_tokens(self._conversation(messages))
        return ids[-self.model.n_ctx:]

    def reply(self, user_text: str) -> Iterator[str]:
        """Routes, then streams the reply to ``user_text`` piece by piece; the exchange joins the history when
        the stream ends, also when the consumer stops it early (Ctrl-C) or closes it. ``self.last`` describes
        the turn."""
        if not user_text.strip():
            raise ValueError("the message is empty")
        messages = self.messages + [{"role": "user", "content": user_text}]
        tokens, dropped = self.fit(messages)  # raises before anything is kept
        turn = Turn(dropped_messages=dropped, n_prompt=len(tokens))
        mixture = None
        if self.router is not None and self.pool is not None and len(self.pool):
            turn.routing = self.router.route(self.route_tokens(messages) or tokens)
            margin = getattr(self.router, "rerank_margin", None)
            if margin is not None and getattr(self.router, "k", None) == 1:
                # `chat --rerank`: a close top two both answer the whole prompt greedily and the adapter whose answer
                # the model is more confident in is kept (logo_cpp.rerank); the reply is then generated (streamed)
                # with it, so it starts after the choice.
                from .rerank import rerank

                rerank(self.model, self.pool, tokens, turn.routing, margin, self.max_tokens, None, False)
            mixture = turn.routing.as_dict() or None
        self.last = turn
        pieces: list[str] = []
        t0 = time.perf_counter()
        stream = self.model.generate(tokens, max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                     seed=self.seed, stream=True, adapters=mixture, fold=self.fold)
        try:
            for piece in stream:
                if not pieces:
                    turn.first_token_seconds = time.perf_counter() - t0
                pieces.append(piece)
                yield piece
        except GeneratorExit:
            turn.stopped = True
            raise
        finally:
            stream.close()  # stops the worker at its next token when the consumer left early
            turn.seconds = time.perf_counter() - t0
            text = "".join(pieces)
            done = getattr(stream, "completion", None)  # the generated token ids: exact, unlike re-tokenizing
            turn.n_generated = (len(done.tokens) if done is not None
                                else len(self.model.tokenize(text, add_special=False)) if text else 0)
            self.messages = messages[dropped:] + [{"role": "assistant", "content": text}]


# -- the terminal ------------------------------------------------------------------------------------------------
def _style(code: str, stream=sys.stdout):
    enabled = stream.isatty() and os.environ.get("NO_COLOR") is None
    return (lambda s: f"\033[{code}m{s}\033[0m") if enabled else (lambda s: s)


def routing_line(routing, top: int = 4) -> str:
    """The chosen mixture in one line: 'capital 0.62 · topic 0.38'."""
    if routing is None:
        return "base model (no adapters)"
    ranked = sorted(zip(routing.names, routing.weights), key=lambda nw: -float(nw[1]))
    parts = [f"{n} {float(w):.2f}" for n, w in ranked[:top]]
    more = len(routing.names) - top
    return " · ".join(parts) + (f" · +{more} more" if more > 0 else "")


def rerank_note(routing) -> str:
    """What `--rerank` did on a turn, in one line ('' when it did not look): 'rerank: sql over math (mean
    log-prob -0.41 vs -0.77), 812 ms' or 'rerank: top two 1.23 apart, not close'."""
    info = getattr(routing, "rerank", None) if routing is not None else None
    if not info or info["margin"] is None:
        return ""
    if not info["reranked"]:
        return f"rerank: top two {info['margin']:.2f} apart, not close"
    kept = info["candidates"].index(info["chosen"])
    other = 1 - kept
    ms = routing.timings.get("rerank_seconds", 0) * 1e3
    return (f"rerank: {info['chosen']} over {info['candidates'][other]} (mean log-prob "
            f"{info['mean_logprobs'][kept]:.2f} vs {info['mean_logprobs'][other]:.2f}), {ms:.0f} ms")


def routing_detail(routing, pool) -> str:
    """Every adapter's signal, highest first, with the chosen mixture marked."""
    from .cli import weighting_text

    if routing is None:
        return "no routing yet (or no adapters)"
    chosen = routing.as_dict()
    blocks = ",".join(str(b) for b in routing.layers) if routing.layers else str(routing.layer)
    lines = [f"routing ({routing.method}, signal {routing.signal} at {routing.module} of block {blocks}, "
             f"{routing.position} token(s), calibration {routing.calibration}"
             + (f", weights {weighting_text(routing)}" if getattr(routing, "weighting", None) else "") + "; "
             f"probe {routing.timings.get('probe_seconds', 0) * 1e3:.0f} ms): {len(chosen)} of {len(pool)} adapters"]
    width = max(len(n) for n in pool.names)
    calibrated = routing.calibration not in (None, "none") and routing.raw_signals is not None
    lines.append(f"  {'adapter':<{width}}  {'signal':>9}" + (f"  {'raw':>9}" if calibrated else ""))

    def fmt(v) -> str:
        return f"{'-':>9}" if v != v else f"{float(v):>9.3f}"

    for i in routing.ranking():
        name = pool.names[i]
        raw = f"  {fmt(routing.raw_signals[i])}" if calibrated else ""
        mark = f"  weight {chosen[name]:.3f}" if name in chosen else ""
        lines.append(f"  {name:<{width}}  {fmt(routing.signals[i])}{raw}{mark}")
    note = rerank_note(routing)
    if note:
        lines.append(note)
    return "\n".join(lines)


def summary(turn: Turn) -> str:
    """'stopped; 12 tokens, first after 0.08 s, 41 tokens/s; prompt 57 tokens' for one reply."""
    if turn.n_generated == 0:
        said = "no reply: the model ended its turn at once"
    else:
        said = f"{turn.n_generated} token{'s' if turn.n_generated != 1 else ''}, first after {turn.first_token_seconds:.2f} s"
        if turn.n_generated > 1:
            rate = (turn.n_generated - 1) / max(turn.seconds - turn.first_token_seconds, 1e-9)
            said += f", {rate:.0f} tokens/s"
    return f"{'stopped; ' if turn.stopped else ''}{said}; prompt {turn.n_prompt} tokens"


class Terminal:
    """Reads user lines and writes replies: interactive on a terminal, line by line from a pipe."""

    def __init__(self, session: ChatSession, banner: str):
        self.session = session
        self.banner = banner
        self.interactive = sys.stdin.isatty()
        self.dim, self.bold, self.cyan = _style("2"), _style("1"), _style("36")
        # SIGINT bookkeeping of loop() (see there): a turn is armed while it may take its KeyboardInterrupt.
        self._armed = False
        self._pending_interrupt = False
        # Piped lines arrive through a helper thread (see _next_piped_line), started by loop() once its SIGINT
        # handler is in place (a line read, or a Ctrl-C, before that would meet Python's default handler); a
        # terminal reads with input().
        self._lines: Optional[queue.Queue] = None
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def read(self) -> Optional[str]:
        """The next user line; None at end of input (Ctrl-D, or the pipe's end)."""
        if self.interactive:
            try:
                # readline counts every character of the prompt as a column unless escape codes sit between
                # \001 and \002; unmarked colour codes garble editing of lines longer than the terminal.
                styled = self.bold("> ") != "> "
                return input("\001\033[1m\002> \001\033[0m\002" if styled else "> ")
            except EOFError:
                print()
                return None
        line = self._next_piped_line()
        if not line:
            return None
        line = line.rstrip("\r\n")
        if line.strip():
            self.say(self.bold("> ") + line)  # a transcript reads as a conversation
        return line

    @staticmethod
    def _start_stdin_pump() -> queue.Queue:
        """A queue a daemon thread fills with stdin's lines, then '' at its end."""
        lines: queue.Queue = queue.Queue()
        stdin = sys.stdin

        def pump() -> None:
            while True:
                line = stdin.readline()
                lines.put(line)
                if not line:
                    return

        threading.Thread(target=pump, name="logo-cpp-chat-stdin", daemon=True).start()
        return lines

    def _next_piped_line(self) -> str:
        """The next line from a pipe ('' at its end), read by a helper thread: the main thread waits in short
        slices, so a Ctrl-C is handled within 0.1 s. Blocked in read() itself, a SIGINT arriving just before the
        call (after Python's last check for signals) would wait for the next input line, and the chat would hang."""
        while True:
            try:
                return self._lines.get(timeout=0.1)
            except queue.Empty:
                continue

    def loop(self) -> int:
        """Reads and answers until end of input or /quit; returns the exit code (0).

        Ctrl-C stops the answer being written, or drops the line being typed, and never leaves. Python's own
        handler raises KeyboardInterrupt wherever the interpreter next checks for signals, and one of those
        places is the loop's jump back to its start, outside any try: a Ctrl-C landing just after a turn ended
        would end the chat. So SIGINT raises only while a turn is armed (inside the try: reading a line, a
        command, an answer), at most once per turn; one that lands while disarmed is kept and raised at the
        start of the next turn, inside the try.
        """
        self.say(self.banner)
        with self._sigint_armed_only():
            if not self.interactive and self._lines is None:
                self._lines = self._start_stdin_pump()
            while True:
                try:
                    self._armed = True
                    if self._pending_interrupt:
                        self._pending_interrupt = self._armed = False
                        raise KeyboardInterrupt
                    line = self.read()
                    if line is None:
                        return 0
                    if not line.strip():
                        continue
                    if line.startswith("/") and not line.startswith("//"):
                        if self.command(line) == "quit":
                            return 0
                        continue
                    self.answer(line[1:] if line.startswith("//") else line)
                except KeyboardInterrupt:
                    # At the prompt, or in a command: drop the line, as a shell does (answer() handles a Ctrl-C
                    # during a reply). Leaving is Ctrl-D or /quit. Disarmed here: a Ctrl-C now waits.
                    self.say()
                    self.say(self.dim("(Ctrl-D or /quit leaves)"))
                finally:
                    self._armed = False  # before the jump back (no signal check can come between)

    def _on_sigint(self, signum, frame) -> None:
        if self._armed:
            self._armed = False  # one KeyboardInterrupt per turn: a second Ctrl-C waits for the next turn
            raise KeyboardInterrupt
        self._pending_interrupt = True

    @contextlib.contextmanager
    def _sigint_armed_only(self):
        """Installs _on_sigint for the loop's duration, where SIGINT has Python's default handler (not where
        it is ignored, as in a background job, and not off the main thread, where signals cannot be set)."""
        try:
            previous = signal.getsignal(signal.SIGINT)
            install = previous is signal.default_int_handler
            if install:
                signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            install = False
        try:
            yield
        finally:
            if install:
                signal.signal(signal.SIGINT, previous)

    def answer(self, text: str) -> None:
        from . import ContextOverflowError

        session = self.session
        stream = session.reply(text)
        try:
            try:
                first = next(stream, None)  # routes and starts; errors surface here
            except (ContextOverflowError, ValueError) as exc:
                self.say(self.dim(f"({exc})"))
                return
            except KeyboardInterrupt:
                self.say(self.dim("(stopped)"))
                return
            turn = session.last
            try:
                if turn.dropped_messages:
                    self.say(self.dim(f"(left out the {turn.dropped_messages} oldest messages to fit the "
                                      f"{session.model.n_ctx}-token context)"))
                if session.pool is not None:
                    probe_ms = turn.routing.timings.get("probe_seconds", 0) * 1e3 if turn.routing else 0
                    note = rerank_note(turn.routing)
                    self.say(self.dim("[") + self.cyan(routing_line(turn.routing))
                             + self.dim(f"]  probe {probe_ms:.0f} ms" + (f"  {note}" if note else "")))
                if first is not None:
                    sys.stdout.write(first)
                    sys.stdout.flush()
                for piece in stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                turn.stopped = True
        finally:
            stream.close()  # the exchange joins the history, also when stopped
        self.say()
        self.say(self.dim(f"({summary(turn)})"))

    def command(self, line: str) -> Optional[str]:
        session = self.session
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name in ("/help", "/?"):
            self.say(HELP)
        elif name == "/reset":
            session.reset()
            self.say(self.dim("(conversation cleared)"))
        elif name == "/route":
            self.say(routing_detail(session.last.routing if session.last else None, session.pool))
        elif name == "/k":
            if session.router is None or not hasattr(session.router, "k"):
                self.say(self.dim("(no router to set k on: start with adapters)"))
            elif not rest.isdigit() or int(rest) < 1:
                self.say(self.dim(f"(/k takes a positive integer, got {rest!r})"))
            elif getattr(session.router, "rerank_margin", None) is not None and int(rest) != 1:
                self.say(self.dim("(--rerank chooses one adapter: k stays 1; start without --rerank for a mixture)"))
            else:
                asked = int(rest)
                session.router.k = k = min(asked, len(session.pool))
                capped = f": the pool has {len(session.pool)}, not {asked}" if asked > k else ""
                self.say(self.dim(f"(routing to the top {k} adapter{'s' if k != 1 else ''} from now on{capped})"))
        elif name == "/adapters":
            if session.pool is None or not len(session.pool):
                self.say(self.dim("(no adapters: the base model answers)"))
            else:
                used = set(session.last.routing.names) if session.last and session.last.routing else set()
                self.say(f"{len(session.pool)} adapters" + (" (* served the last reply)" if used else "") + ":")
                self.say("  " + "  ".join(f"{n}{'*' if n in used else ''}" for n in session.pool.names))
        elif name == "/system":
            session.system = rest or None
            session.reset()
            self.say(self.dim("(system message " + ("set" if rest else "cleared") + "; conversation cleared)"))
        else:
            self.say(self.dim(f"(unknown command {name}; /help lists them)"))
        return None


def default_max_tokens(n_ctx: int) -> int:
    """The longest reply when --max-tokens is not given: DEFAULT_MAX_TOKENS, at most half of an ``n_ctx``-token
    context (at least 1), so a small --ctx still leaves room for the conversation instead of refusing to start."""
    return max(1, min(DEFAULT_MAX_TOKENS, n_ctx // 2))


def run_chat(args) -> int:
    import logo_cpp
    from . import default_model

    if args.no_adapters and args.adapters:
        raise ValueError("--no-adapters and --adapters contradict each other: give one")
    model_path, adapter_paths = default_model.model_and_adapters(args.model, args.adapters)
    model = logo_cpp.Model(model_path, n_ctx=args.ctx, device=args.device, n_threads=args.threads)
    pool = logo_cpp.AdapterPool(model, adapter_paths) if adapter_paths and not args.no_adapters else None
    k = args.k if args.k is not None else DEFAULT_K
    if args.rerank is not None:
        if pool is None or not len(pool):
            raise ValueError("--rerank needs adapters: it chooses between the two the router ranks first")
        if args.k not in (None, 1):
            raise ValueError(f"--rerank applies to --k 1 (got --k {args.k})")
        k = 1
    from .cli import mixture_weight_kwargs

    router = logo_cpp.LoGo(model, pool, k=min(k, len(pool)), rerank_margin=args.rerank,
                           **mixture_weight_kwargs(args)) if pool is not None else None
    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens(args.ctx)
        if max_tokens < DEFAULT_MAX_TOKENS:
            print(f"logo-cpp chat: replies capped at {max_tokens} tokens, half the {args.ctx}-token context (--ctx), "
                  f"leaving the rest to the conversation; --max-tokens sets it", file=sys.stderr)
    session = ChatSession(model, pool, router, system=args.system, max_tokens=max_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed, route_on=args.route_on,
                          fold=args.fold)
    name = os.path.basename(str(model_path)).removesuffix(".gguf")
    routed = f"{len(pool)} adapters, LoGo k={router.k} on the {'last message' if session.route_on == 'last-user' else 'conversation'}" \
        + (f", rerank under {args.rerank:g}" if args.rerank is not None else "") if pool is not None else "no adapters"
    banner = (f"logo-cpp chat · {name} · {routed} · context {args.ctx} tokens\n"
              "/help for commands, Ctrl-C stops an answer, Ctrl-D leaves")
    return Terminal(session, banner).loop()


def add_arguments(p) -> None:
    from .cli import add_cache_args, add_fold_arg, add_mixture_weight_args, add_rerank_argument, positive_int, seed, thread_count

    p.add_argument("--model", "-m", default=None, help="base model GGUF (default: the shipped SmolLM2-135M-Instruct)")
    p.add_argument("--adapters", "-a", nargs="+", default=[], help="adapter GGUF files or directories (with --model)")
    p.add_argument("--no-adapters", action="store_true", help="chat with the base model alone")
    p.add_argument("--k", type=positive_int, default=None, help=f"adapters per turn (default {DEFAULT_K})")
    add_mixture_weight_args(p)
    add_rerank_argument(p, "sets --k 1; a reranked turn generates both candidates' answers first, then streams the "
                           "reply with the kept adapter; the routing line shows the choice")
    add_cache_args(p)
    add_fold_arg(p)
    add_route_on_argument(p, "--route-on", "each turn")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-tokens", "-n", type=positive_int, default=None,
                   help=f"longest reply in tokens (default {DEFAULT_MAX_TOKENS}, at most half of --ctx; a value given "
                        "here must leave room for the conversation)")
    # SmolLM2's model card samples its instruct models at temperature 0.2, top-p 0.9.
    p.add_argument("--temperature", type=float, default=0.2, help="0 is greedy (default 0.2)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
    p.add_argument("--seed", type=seed, default=None, help="sampling seed in [0, 2**64) (default: a random one)")
    p.add_argument("--ctx", type=positive_int, default=2048, help="context length (tokens)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", "-t", type=thread_count, default=None)
