"""The Python face of a loaded base model: tokenization, logits, generation (plain, streamed, batched), chat."""

from __future__ import annotations

import codecs
import collections.abc
import os
import queue
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from ._closing import ClosedError, CoreHandle
from ._limits import INT32_MAX, MAX_TOP_LOGPROBS, MIXTURE_WEIGHT_RANGE, mixture_weight_ok
from ._text import as_bytes

# Text (str, or bytes passed to the tokenizer unchanged) or token ids.
Prompt = Union[str, bytes, Sequence[int]]


@dataclass
class Timings:
    n_prompt: int
    n_generated: int
    prefill_seconds: float
    decode_seconds: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float




@dataclass
class TokenLogprob:
    """One generated token's log-probability (natural log, float32) under the model's own distribution: the
    log-softmax of the raw logits at temperature 1, before the sampler's temperature, top-k/top-p/min-p truncation
    and ignore_eos masking, as OpenAI's API and llama-server (n_probs) report it; so it does not depend on the
    sampling parameters. ``top``: the ``top_logprobs`` most likely tokens at that step as (token id, log-probability),
    most likely first (equal logits: lower id first); empty unless asked for."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop", "eos" or "length"
    timings: Timings
    routing: Any = None  # set by LoGo routers: which adapters served this completion
    # With generate(..., logprobs=True): one TokenLogprob per token of ``tokens``; None when not asked for.
    logprobs: Optional[list[TokenLogprob]] = None
    # With logprobs=True and finish_reason "eos": the end-of-generation token that ended it (not in ``tokens``).
    eos: Optional[TokenLogprob] = None

    def __str__(self) -> str:
        return self.text


class CompletionStream(Iterator[str]):
    """What ``generate(..., stream=True)`` returns: an iterator of text pieces (str) as they become final.
    Once it has ended, or was closed early (the generation then stops at its next token), ``completion`` is the
    Completion of what was generated (token ids, finish_reason, timings), for exact counts: tokenizing the text
    again need not give the same tokens. None until then, and if generation failed."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.completion: Optional[Completion] = None

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stops the generation (at its next token) and waits for it; idempotent."""
        self._pieces.close()


def token_logprob(raw: tuple) -> TokenLogprob:
    """The binding's (token, logprob, [(token, logprob), ...]) as a TokenLogprob."""
    token, logprob, top = raw
    return TokenLogprob(int(token), float(logprob), [(int(t), float(v)) for t, v in top])


def _completion(raw: Mapping[str, Any], logprobs: bool = False) -> Completion:
    return Completion(
        text=raw["text"].decode("utf-8", errors="replace"),
        tokens=list(raw["tokens"]),
        finish_reason=raw["finish_reason"],
        timings=Timings(**raw["timings"]),
        logprobs=[token_logprob(t) for t in raw["logprobs"]] if logprobs else None,
        eos=token_logprob(raw["eos"]) if logprobs and raw["eos"] is not None else None,
    )


def logprob_kwargs(logprobs: Any, top_logprobs: Any) -> dict:
    """``logprobs`` (bool) and ``top_logprobs`` (int in [0, MAX_TOP_LOGPROBS]; needs logprobs) checked, as the
    generation keyword arguments of the binding; ValueError naming the argument otherwise."""
    if not isinstance(logprobs, bool):
        raise ValueError(f"logprobs must be True or False, got {type(logprobs).__name__} {logprobs!r:.40}")
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, (int, np.integer)) \
            or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs!r:.40}")
    if top_logprobs and not logprobs:
        raise ValueError("top_logprobs needs logprobs=True")
    return dict(logprobs=logprobs, top_logprobs=int(top_logprobs))


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1



# The message roles of OpenAI's Chat Completions API today. "developer" is OpenAI's newer name for system
# instructions: chat templates (SmolLM2's, chatml, llama-3's) know "system", so it is passed on as "system".
# "function" (OpenAI's deprecated role for a function's result) and anything else are refused: a template
# given a role it does not know renders it as plain text or drops it, so the model would see another prompt
# than the caller meant.
# What a fixed mixture becomes while it generates (``fold=`` of Model.generate/logits and the routers' generate;
# C++ logo::FoldMode, logo/types.h). "exact" (the default) computes the adapters' terms as they are defined;
# "requantize" folds the mixture into copies of the adapted weights in their own type (LOSSY on quantized
# weights, exact mode's fold on F32/F16/BF16), "requantize-stochastic" the same with unbiased rounding,
# "upcast" into Q8_0 copies of quantized weights (finer than theirs: lossy by a Q8_0 step): see Model.generate.
FOLD_MODES = ("exact", "requantize", "requantize-stochastic", "upcast")


def check_fold(fold: Any) -> str:
    """``fold`` if it is one of FOLD_MODES, else ValueError naming the field and the choices."""
    if not isinstance(fold, str) or fold not in FOLD_MODES:
        raise ValueError(f"fold must be one of {', '.join(repr(m) for m in FOLD_MODES)}, got {fold!r}")
    return fold


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def _message_text(content: Any, index: int) -> Union[str, bytes]:
    """A message's content as the template gets it: str or bytes as given, or OpenAI's list of content parts
    with every part a text part ({"type": "text", "text": str}), joined as the server joins them. TypeError
    (naming the message) for anything else: str() of None or of a list would reach the model as text."""
    if isinstance(content, (str, bytes)):
        return content
    where = f"messages[{index}]['content']"
    if isinstance(content, (list, tuple)):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise TypeError(f"{where}[{j}] must be a text part {{'type': 'text', 'text': str}} (only text is "
                                f"supported), got {part!r:.80}")
            texts.append(part["text"])
        return "".join(texts)
    raise TypeError(f"{where} must be a str, bytes or a list of text parts, got {type(content).__name__}")


def chat_role_error(role: Any) -> Optional[str]:
    """None for a role CHAT_ROLES holds, else what is wrong with it (for ValueError and HTTP 400 messages)."""
    if isinstance(role, str) and role in CHAT_ROLES:
        return None
    accepted = ", ".join(CHAT_ROLES[:-1]) + " or " + CHAT_ROLES[-1]
    if role == "function":
        return f"'function' is OpenAI's deprecated role for a function's result; send it as 'tool' (roles: {accepted})"
    shown = repr(role) if isinstance(role, (str, bytes)) else f"a value of type {type(role).__name__}"
    return f"{shown[:60]} is not a chat role; use {accepted}"


def _file_state(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Model:
    """A Llama-family GGUF model (llama, qwen2, qwen3) run by logo-cpp's own ggml graph.

    ``device="auto"`` takes a GPU when the linked ggml has one, else the CPU. ``n_threads=None`` uses one
    thread per core. One Model serves one call at a time (calls from several threads are serialised);
    create a Model per thread for parallel work.

    ``repack=False`` keeps every weight in the file's own layout, as llama.cpp's ``--no-repack`` does; by
    default the weight types that have a repacked CPU layout (Q4_0, Q4_K, IQ4_NL on x86) use it, as llama.cpp
    does. ggml's AMX layout is never used: its matmul crashes on some CPUs (ggml-org/llama.cpp#20824).

    ``close()`` (or the end of a ``with Model(...) as model:`` block) frees the weights and KV caches at once,
    rather than whenever the garbage collector gets to them: see close() for what it takes with it.
    """

    # The C++ model and its single-sequence session: gone after close(), and every use then raises ClosedError.
    _core = CoreHandle()
    _session = CoreHandle()

    def __init__(
        self,
        path: Union[str, os.PathLike],
        n_ctx: int = 2048,
        device: str = "auto",
        n_threads: Optional[int] = None,
        *,
        n_batch: int = 512,
        use_mmap: bool = True,
        repack: bool = True,
    ):
        path = os.fspath(path)
        # The core holds these as int32 (logo/types.h): larger values are refused here, not by the binding.
        for arg, value, optional in (("n_ctx", n_ctx, False), ("n_threads", n_threads, True), ("n_batch", n_batch, False)):
            if optional and value is None:
                continue
            # Threads: ggml's thread limit (more would start that many threads per graph evaluation).
            highest = _core.max_threads if arg == "n_threads" else INT32_MAX
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
                raise ValueError(f"{arg} must be an integer in [1, {highest}]{' or None' if optional else ''}, "
                                 f"got {value!r}")
        self._path = path
        # The file as loaded, so the calibration disk cache (keyed by the file's content) notices a file that
        # changes on disk after loading; an absent file gets the core's own error below.
        self._file_state = _file_state(path)
        self._core = _core.Model(path, device=device, n_threads=n_threads or 0, use_mmap=use_mmap,
                                repack=repack)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self._session = _core.Session(self._core, n_ctx=n_ctx, n_seq=1, n_batch=n_batch)
        self._batch_sessions: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._pools: "weakref.WeakSet" = weakref.WeakSet()
        # The cancellation flags of open streams (generate(stream=True)): close() raises them, so a stream's
        # generation stops at its next token instead of running to its end before the weights can be freed.
        self._live_streams: set = set()
        self._eog_tokens: Optional[np.ndarray] = None  # _end_of_generation_tokens(), made on first use

    def _file_changed(self) -> bool:
        """Whether the model file on disk is no longer the one that was loaded (size, times or inode differ)."""
        return self._file_state is None or _file_state(self.path) != self._file_state

    # -- description -------------------------------------------------------------------------------
    path = property(lambda self: self._core.path)
    arch = property(lambda self: self._core.arch)
    n_vocab = property(lambda self: self._core.n_vocab)
    n_embd = property(lambda self: self._core.n_embd)
    n_layer = property(lambda self: self._core.n_layer)
    device = property(lambda self: self._core.device)
    n_threads = property(lambda self: self._core.n_threads)
    bos = property(lambda self: self._core.bos)
    eos = property(lambda self: self._core.eos)

    def _end_of_generation_tokens(self) -> np.ndarray:
        """Every end-of-generation token id of the vocabulary (int64, ascending; llama.cpp stops at any of them),
        computed once: a pass over the vocabulary."""
        if self._eog_tokens is None:
            core = self._core
            self._eog_tokens = np.array([t for t in range(core.n_vocab) if core.is_end_of_generation(t)],
                                        dtype=np.int64)
        return self._eog_tokens

    def __repr__(self) -> str:
        if self.closed:
            return f"Model({self._path!r}, closed)"
        return (f"Model({self.path!r}, arch={self.arch!r}, n_layer={self.n_layer}, n_embd={self.n_embd}, "
                f"n_vocab={self.n_vocab}, n_ctx={self.n_ctx}, device={self.device!r})")

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the model now: its weights (and their file mapping), its KV caches, and every AdapterPool
        loaded for it, which is closed too (a pool's adapters are validated against, and only usable with,
        this model). Afterwards every method and property of the model and of those pools raises
        logo_cpp.ClosedError, and so do routers over them; closing again does nothing. A call running on
        another thread finishes first (close() waits for it). What else holds the C++ model keeps the weights
        alive until it is gone itself: a server Engine's batch (logo-cpp serve), or a ``_core`` object a
        caller took out of the private API. An open stream (``generate(..., stream=True)``) stops generating at
        its next token, and its next ``next()`` raises ClosedError (its ``completion`` holds what was generated)."""
        for cancelled in list(getattr(self, "_live_streams", ())):
            cancelled.set()
        with self._lock:
            if self.closed:
                return
            for pool in list(self._pools):
                pool.close()
            self._batch_sessions.clear()
            self._session = None
            self._core = None

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self.__dict__.get(Model._core.slot) is None

    def _closed_message(self) -> str:
        return (f"this Model ({self._path}) is closed: close() or the end of its `with` block freed it; "
                f"load the model again to use it")

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, text: Union[str, bytes], add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` through the model's own vocabulary (libllama), as llama.cpp's llama_tokenize.

        ``bytes`` go to the tokenizer unchanged (invalid UTF-8 and NUL bytes included); a ``str`` is encoded
        as UTF-8 (lone surrogates: see ``logo_cpp._text``). ``add_special`` adds BOS where the vocabulary
        asks for it; ``parse_special`` turns special-token text such as ``<|im_start|>`` into its id.
        Raises TypeError for other types, ValueError for an unencodable str."""
        return self._core.tokenize(as_bytes(text), add_special, parse_special)

    def detokenize(self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False) -> str:
        return self._core.detokenize(self._check_tokens(tokens, allow_empty=True), remove_special,
                                     unparse_special).decode("utf-8", errors="replace")

    def _check_tokens(self, tokens: Sequence[int], allow_empty: bool = False) -> list[int]:
        if isinstance(tokens, (str, bytes)) or not (isinstance(tokens, Sequence) or isinstance(tokens, np.ndarray)):
            raise TypeError(f"tokens must be a sequence of token ids (ints), got {type(tokens).__name__}")
        if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in tokens):
            bad = next(t for t in tokens if isinstance(t, bool) or not isinstance(t, (int, np.integer)))
            raise TypeError(f"token ids must be ints, got {type(bad).__name__} {bad!r}")
        ids = [int(t) for t in tokens]
        if not ids and not allow_empty:
            raise ValueError("empty prompt: at least one token is needed")
        for t in ids:
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} is out of range [0, {self.n_vocab})")
        return ids

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text (str or bytes, with BOS and special tokens parsed) or ids."""
        if isinstance(prompt, (str, bytes, bytearray, memoryview)):
            text = as_bytes(prompt, "prompt")
            if len(text) == 0:
                raise ValueError("empty prompt: at least one character is needed")
            return self.tokenize(text, add_special=True, parse_special=True)
        if not isinstance(prompt, Sequence) and not isinstance(prompt, np.ndarray):
            raise TypeError(f"prompt must be str, bytes or a sequence of token ids, got {type(prompt).__name__}")
        return self._check_tokens(prompt)

    # -- evaluation --------------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int], *, adapters: Optional[Mapping[str, float]] = None,
               fold: str = "exact") -> np.ndarray:
        """Logits at every position, float32 of shape (n_tokens, n_vocab), from an empty context;
        with ``adapters`` ({"name": weight}) the fixed mixture acts in every adapted linear map, computed as
        ``fold`` says (FOLD_MODES; "requantize" is lossy on quantized weights: see generate())."""
        check_fold(fold)
        ids = self._check_tokens(tokens)
        mixture = {}
        if adapters is not None:
            pool, selection = self._resolve_mixture(adapters)
            mixture = dict(pool=pool._core, selections=[selection], fold=fold)
        with self._lock:
            self._session.clear(0)
            out = self._session.evaluate(0, 1, ids, all_logits=True, **mixture)
            self._session.clear(0)
        return out

    def hidden_states(self, tokens: Sequence[int], layers: Optional[Sequence[int]] = None) -> np.ndarray:
        """The residual stream entering each block of ``layers`` (default: every block; negative indices count
        from the end) at every token, from an empty context and without adapters, in one forward pass:
        float32 of shape (len(layers), n_tokens, n_embd). ``hidden_states(ids, [-1])[0, -1]`` is LoGo's probe
        vector (the paper's h: before the block's attention RMSNorm)."""
        ids = self._check_tokens(tokens)
        wanted = list(range(self.n_layer)) if layers is None else [int(l) for l in layers]
        resolved = []
        for layer in wanted:
            if not -self.n_layer <= layer < self.n_layer:
                raise ValueError(f"layer {layer} is out of range for a model of {self.n_layer} blocks")
            resolved.append(layer % self.n_layer)
        if not resolved:
            raise ValueError("layers is empty")
        order = sorted(set(resolved))
        with self._lock:
            self._session.clear(0)
            out = self._session.hidden_states(0, ids, order)
        by_layer = dict(zip(order, out))
        return np.stack([by_layer[l] for l in resolved])

    def _session_for(self, n_seq: int):
        if n_seq == 1:
            return self._session
        session = self._batch_sessions.get(n_seq)
        if session is None:
            self._batch_sessions.clear()  # keep one batch session's KV cache at a time
            session = _core.Session(self._core, n_ctx=self.n_ctx, n_seq=n_seq, n_batch=self.n_batch)
            self._batch_sessions[n_seq] = session
        return session

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        seed: Optional[int] = None,
        stop: Union[str, bytes, Sequence[Union[str, bytes]], None] = None,
        stream: bool = False,
        *,
        ignore_eos: bool = False,
        adapters: Optional[Mapping[str, float]] = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        fold: str = "exact",
    ) -> Union[Completion, "CompletionStream"]:
        """Generates a continuation of ``prompt`` (str, bytes passed to the tokenizer unchanged, or token ids).

        ``temperature=0`` is greedy. Generation ends at EOS, at ``max_tokens``, or before the first
        ``stop`` string (str or bytes). With ``stream=True`` a CompletionStream yields text pieces as they are
        final, and holds the Completion once it has ended.
        ``ignore_eos=True`` never samples an end-of-generation token (their logits are masked, as llama-server's
        ``ignore_eos``), so generation runs to ``max_tokens`` with text all along.
        ``logprobs=True`` fills ``Completion.logprobs`` (one TokenLogprob per generated token: log-softmax of the raw
        logits at temperature 1, as OpenAI reports it) and ``Completion.eos``; ``top_logprobs`` (0 to 20) adds that
        many most likely alternatives per token. They cost a log-softmax over the vocabulary per token.

        ``adapters`` ({"name": weight}) generates with that fixed mixture, sum_i w_i (alpha_i / r_i) B_i A_i added
        to every adapted weight W; each w_i a finite number in [-1000, 1000] (MAX_MIXTURE_WEIGHT: beyond, the
        float16 product of a quantized base's low-rank pair overflows into NaN logits; ValueError naming the
        adapter). ``fold`` says how it is computed:

        - ``"exact"`` (default): the adapters' terms as defined (a low-rank pair beside W on quantized bases,
          README "How a mixture is applied"; over F32/F16/BF16 weights a generation of >= 16 tokens folds the
          mixture into copies of the weights, rounded once to their type).
        - ``"requantize"``: **lossy on quantized bases**. The mixture is folded into copies of the adapted
          weights in their own type, ``W' = quantize_T(dequantize(W) + sum_i w_i s_i B_i A_i)`` (T: W's ggml
          type, quantized by ggml's quantizer for T; the delta in float32 from the adapters as stored), the way
          llama.cpp's export-lora merges a LoRA into a quantized model. Decoding then costs exactly what the
          base costs for any number of adapters, but every adapted weight moves by up to one quantization step
          of its block, an error of the size of the base's own quantization (measured on SmolLM2 in
          docs/mixtures-on-quantized-bases.md section 11). Over F32/F16/BF16 weights it is the exact fold, at
          any length. Types: every ggml type the device can both dequantize and quantize (on the CPU all but
          IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: ValueError naming the tensor). The fold reads
          each adapted weight once per call (milliseconds to a second on small models).
        - ``"requantize-stochastic"``: as ``"requantize"``, then each quant of a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weight is
          re-rounded on its block's grid up or down at random (seeded by the weight's name, so the same call gives
          the same weights), with the probability that makes the expected value the exact sum. Nearest rounding
          gives a weight its old value back wherever the adapters change it by less than half a step (most of an
          adapter's change on 4-5-bit weights); unbiased rounding keeps that change on average over the inputs a
          matmul sums, at the price of noise. K-quant and IQ weights keep nearest rounding. Same speed; on SmolLM2
          Q4_1 far closer to the exact mixture than ``"requantize"`` (section 11 of the same document).
        - ``"upcast"``: the mixture folded into **Q8_0** copies of the quantized adapted weights, whatever their own
          type: ``W' = quantize_Q8_0(dequantize(W) + sum_i w_i s_i B_i A_i)`` (ggml's nearest rounding). Q8_0 is
          finer than every quantized weight type, so each adapted weight moves by at most half a Q8_0 step (1/254
          of its block's range: ~17x finer than a Q4_1 step), and decoding reads those weights at 8.5 bits an
          element instead of their own, the same cost for any number of adapters (Q4_1 SmolLM2 with attn_q/attn_v
          adapted: +6% of a decode step's bytes). F32/F16/BF16 weights: the exact fold. Every type ggml can
          dequantize (IQ* included). Measured in section 12 of the same document.

        ValueError for a ``fold`` outside FOLD_MODES (naming the choices).
        """
        check_fold(fold)
        ids = self._prompt_tokens(prompt)
        kwargs = self._sampling_kwargs(max_tokens, temperature, top_k, top_p, min_p, seed, stop, ignore_eos)
        kwargs.update(logprob_kwargs(logprobs, top_logprobs))
        if adapters is not None:
            pool, selection = self._resolve_mixture(adapters)
            kwargs.update(pool=pool._core, selections=[selection], fold=fold)
        if stream:
            return self._stream([ids], kwargs)
        return self._run([ids], kwargs)[0]

    def generate_batch(self, prompts: Sequence[Prompt], max_tokens: int = 128, temperature: float = 0.8,
                       top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, seed: Optional[int] = None,
                       stop: Union[str, bytes, Sequence[Union[str, bytes]], None] = None, *,
                       ignore_eos: bool = False, logprobs: bool = False, top_logprobs: int = 0) -> list[Completion]:
        """Generates for several prompts at once: one graph evaluation per step for all of them. ``prompts`` is
        a sequence of prompts (each str, bytes or token ids); TypeError for a single str or bytes, which would
        otherwise be read as one prompt per character. ``logprobs``/``top_logprobs``: as generate()."""
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of prompts; for one prompt (a str or bytes) use generate()")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        ids = [self._prompt_tokens(p) for p in prompts]
        kwargs = self._sampling_kwargs(max_tokens, temperature, top_k, top_p, min_p, seed, stop, ignore_eos)
        kwargs.update(logprob_kwargs(logprobs, top_logprobs))
        return self._run(ids, kwargs)

    def folded_weights(self, adapters: Mapping[str, float], fold: str = "requantize") -> dict[str, tuple[str, bytes]]:
        """The adapted weights with the fixed mixture ``adapters`` ({"name": weight}) folded in, as
        generate(..., fold=fold) computes with them: {GGUF tensor name: (ggml type name, data)}, the data in
        ggml's plain layout for that type (what a GGUF file stores; never a CPU-repacked layout), e.g. to write a
        merged model. ``fold="exact"`` folds only F32/F16/BF16 weights (ValueError for a mixture over quantized
        weights); "requantize" any type the device can dequantize and quantize, "upcast" writes quantized weights
        as Q8_0 (see generate())."""
        check_fold(fold)
        session = self._session  # a closed model raises ClosedError here, before its pools are looked at
        pool, selection = self._resolve_mixture(adapters)
        with self._lock:
            out = session.folded_weights(pool._core, selection, fold)
        return {name: (type_name, data) for name, type_name, data in out}

    def chat(self, messages: Sequence[Mapping[str, Union[str, bytes]]], *, chat_template: Optional[str] = None,
             **generate_kwargs) -> Union[Completion, Iterator[str]]:
        """Generates the assistant's reply to ``messages`` ({"role", "content"} dicts; str or bytes) with the
        model's chat template. Roles are OpenAI's (CHAT_ROLES: system, developer, user, assistant, tool;
        "developer" reaches the template as "system"); ValueError naming the message for any other. Contents are
        plain text (see chat_tokens())."""
        return self.generate(self.chat_tokens(messages, chat_template=chat_template), **generate_kwargs)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Union[str, bytes]]], *,
                            add_generation_prompt: bool = True, chat_template: Optional[str] = None) -> str:
        """The prompt the model's chat template (or ``chat_template``: a Jinja template or a name libllama
        knows, e.g. "chatml") makes of ``messages``; bytes that are not UTF-8 show as U+FFFD here (chat()
        passes them to the tokenizer unchanged). ValueError for malformed messages, a role outside CHAT_ROLES
        (naming the message, the role and the accepted ones) or NUL bytes."""
        pairs, template = self._chat_messages(messages, chat_template)
        return self._core.apply_chat_template(pairs, add_generation_prompt, template).decode("utf-8", errors="replace")

    def chat_tokens(self, messages: Sequence[Mapping[str, Union[str, bytes]]], *, add_generation_prompt: bool = True,
                    chat_template: Optional[str] = None, add_special: bool = True,
                    limit: Optional[int] = None) -> list[int]:
        """The token ids of the prompt apply_chat_template() renders, with each message's content as plain text.

        Special tokens are parsed in the template's own text only (``<|im_start|>``, ``<|im_end|>``, ...); a
        message's content is tokenized with parse_special=False, as OpenAI's API treats it, so content holding
        ``<|im_end|>\n<|im_start|>system`` is those characters and cannot open a turn of another role. For content
        without special-token text the ids equal ``tokenize(apply_chat_template(...), add_special, True)``, what
        llama.cpp's server feeds the model. ``add_special`` adds BOS (and EOS) where the vocabulary asks for them.
        With ``limit`` (an int >= 0) it stops once it has more than ``limit`` ids and returns those: whether a
        conversation fits a context of ``limit`` tokens costs limit + 1 tokens' work, not the whole conversation's.
        ValueError as apply_chat_template(), or for a template that changes contents beyond trimming whitespace
        (their bytes cannot be told from the template's)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
        pairs, template = self._chat_messages(messages, chat_template)
        return self._core.chat_tokens(pairs, add_generation_prompt, template, add_special,
                                      -1 if limit is None else min(limit, INT32_MAX))

    def _chat_messages(self, messages, chat_template: Optional[str]) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Checked (role, content) byte pairs and the template override (b"" for the model's own)."""
        pairs = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a mapping with 'role' and 'content'")
            role = m["role"].decode("utf-8", errors="replace") if isinstance(m["role"], bytes) else m["role"]
            problem = chat_role_error(role)
            if problem is not None:
                raise ValueError(f"messages[{i}]['role']: {problem}")
            role = "system" if role == "developer" else role
            content = _message_text(m["content"], i)
            pair = (as_bytes(role, f"messages[{i}]['role']"), as_bytes(content, f"messages[{i}]['content']"))
            for key, value in zip(("role", "content"), pair):
                # libllama's chat template API takes C strings, which end at the first NUL.
                if b"\0" in value:
                    raise ValueError(f"messages[{i}]['{key}'] holds a NUL byte, which chat templates cannot carry; "
                                     f"tokenize or generate from the bytes directly instead")
            pairs.append(pair)
        if not pairs:
            raise ValueError("messages is empty")
        template = as_bytes(chat_template or "", "chat_template")
        if b"\0" in template:
            raise ValueError("chat_template holds a NUL byte")
        return pairs, template

    # -- adapters ----------------------------------------------------------------------------------
    def _attach_pool(self, pool) -> None:
        self._pools.add(pool)

    def _detach_pool(self, pool) -> None:
        self._pools.discard(pool)

    def _resolve_mixture(self, adapters: Mapping[str, float]):
        """{"name": weight} over the adapters of this model's pools -> (pool, [(index, weight)])."""
        if not isinstance(adapters, Mapping) or not adapters:
            raise ValueError("adapters must be a non-empty mapping of adapter name to weight")
        chosen_pool = None
        selection = []
        for name, weight in adapters.items():
            holders = [p for p in self._pools if name in p]
            if not holders:
                raise KeyError(f"no adapter named {name!r} in any open AdapterPool of this model")
            if len(holders) > 1:
                raise ValueError(f"adapter name {name!r} is in several pools of this model; use one pool")
            if chosen_pool is not None and holders[0] is not chosen_pool:
                raise ValueError("a mixture must come from one AdapterPool")
            chosen_pool = holders[0]
            # A weight is a number: "1" or True would be read as 1.0 silently, hiding a caller's mistake.
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
                raise ValueError(f"weight of adapter {name!r} must be a number, got {type(weight).__name__} {weight!r}")
            weight = float(weight)
            if not mixture_weight_ok(weight):
                raise ValueError(f"weight of adapter {name!r} must be {MIXTURE_WEIGHT_RANGE}, got {weight}")
            selection.append((chosen_pool.index(name), weight))
        return chosen_pool, selection

    # -- internals ---------------------------------------------------------------------------------
    def _sampling_kwargs(self, max_tokens, temperature, top_k, top_p, min_p, seed, stop, ignore_eos) -> dict:
        if isinstance(stop, (str, bytes)):
            stop = [stop]
        elif stop is not None and not isinstance(stop, collections.abc.Sequence):
            raise TypeError(f"stop must be a string (str or bytes), a list of them or None, got {type(stop).__name__}")
        stop = list(stop or [])
        if any(not isinstance(s, (str, bytes)) or not s for s in stop):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings (str or bytes)")
        stop = [as_bytes(s, "stop") for s in stop]
        # The C++ options hold max_tokens and top_k as int32 and the seed as uint64 (logo/types.h): larger
        # values are refused here rather than as a binding's type error. bool is an int in Python, not a count.
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens <= INT32_MAX:
            raise ValueError(f"max_tokens must be an integer in [0, {INT32_MAX}], got {max_tokens!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= INT32_MAX:
            raise ValueError(f"top_k must be an integer in [0, {INT32_MAX}] (0 disables it), got {top_k!r}")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r:.40}")
        if not (float(temperature) >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not 0 < float(top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if not 0 <= float(min_p) < 1:
            raise ValueError(f"min_p must be in [0, 1), got {min_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64) or None, got {seed!r}")
        return dict(max_tokens=max_tokens, temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                    min_p=float(min_p), seed=_random_seed() if seed is None else seed, stop=stop,
                    ignore_eos=ignore_eos)

    def _run(self, prompts: list[list[int]], kwargs: dict, on_text=None) -> list[Completion]:
        with self._lock:
            session = self._session_for(len(prompts))
            raw = session.generate(prompts, on_text=on_text, **kwargs)
        return [_completion(r, kwargs.get("logprobs", False)) for r in raw]

    def _stream(self, prompts: list[list[int]], kwargs: dict) -> "CompletionStream":
        """Runs generation on a worker thread; pieces travel through a queue to the consumer."""
        pieces: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        cancelled = threading.Event()

        def on_text(_seq: int, piece: bytes) -> bool:
            pieces.put(("text", piece))
            return not cancelled.is_set()

        def work() -> None:
            try:
                result = self._run(prompts, kwargs, on_text)
                pieces.put(("done", result))
            except BaseException as exc:  # delivered to the consumer
                pieces.put(("error", exc))

        def iterate() -> Iterator[str]:
            self._live_streams.add(cancelled)
            worker = threading.Thread(target=work, name="logo-cpp-generate", daemon=True)
            worker.start()
            # A piece may end inside a character: the decoder keeps those bytes for the next piece. A byte that
            # can never start or continue one (0xFF, a stray continuation byte) becomes U+FFFD at once, as in the
            # completion's text, rather than holding back everything after it until the end.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                while True:
                    kind, value = pieces.get()
                    if self.closed:  # close() came between two pieces: the model is gone, as for any other call
                        raise ClosedError(self._closed_message())
                    if kind == "text":
                        text = decoder.decode(value)
                        if text:
                            yield text
                    elif kind == "error":
                        raise value
                    else:
                        stream.completion = value[0]
                        rest = decoder.decode(b"", final=True)
                        if rest:
                            yield rest
                        return
            finally:
                self._live_streams.discard(cancelled)
                cancelled.set()
                worker.join()
                while stream.completion is None and not pieces.empty():  # stopped early: what was generated
                    kind, value = pieces.get()
                    if kind == "done":
                        stream.completion = value[0]

        stream = CompletionStream(iterate())
        return stream
