"""The request bodies the server accepts: OpenAI's completion and chat-completion parameters, llama-server's
per-request ``lora``, and logo-cpp's ``adapters`` and ``logo`` extensions, validated with pydantic.

A client never gets a silently different answer: a parameter of OpenAI's API or llama-server's that would change
the answer and that this server does not implement (penalties, grammars, mirostat, tools...: NOT_IMPLEMENTED) is
refused with 400 naming it unless it has its neutral value; parameters that change nothing here (``user``,
``metadata``, ``store``...: INERT) are accepted; any other top-level field is refused as unknown, as OpenAI's API
does (llama-server ignores them, but a field this server does not know may be another server's sampling option).
Defaults follow llama-server where OpenAI leaves the choice to the server (``temperature`` 0.8, ``top_k`` 40,
``top_p`` 0.95, ``min_p`` 0.05); ``null`` means the default, as in OpenAI's API and llama-server.

Numbers must be JSON numbers (``true`` or ``"0.5"`` for a temperature is refused, not read as 1 or 0.5), and
finite; integers fit what the runtime takes (max_tokens, top_k, logo.k at most 2^31 - 1; 1e3 reads as 1000);
booleans are JSON booleans (``"yes"`` or 1 for ``stream`` is refused). Fields that take several forms
(``prompt``, ``stop``, ``adapters``, a message's ``content``) are checked
by hand before pydantic sees them: a union's own error names only its first member ("Input should be 'auto'
or 'none'" for a mixture with a bad weight), where these messages say what was wrong and what is accepted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Mixture weights, scales and LoGo's temperature reach the C++ core as float32, counts (tokens, top_k, k) as int32.
from .._limits import FLOAT32_MAX, INT32_MAX, MAX_TOP_LOGPROBS, MIXTURE_WEIGHT_RANGE, mixture_weight_ok

MAX_STOP = 16      # OpenAI allows 4; llama-server any number: a bound keeps the stop search cheap
MAX_CHOICES = 16   # n (and prompts x n) per request; each choice takes a slot
# The calibrations whose per-adapter statistics the server computes at startup (logo_cpp.router).
STATISTICAL_CALIBRATIONS = ("zscore", "zscore_sq")


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality with JSON's types: true is not 1, 1.0 is 1."""
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    if isinstance(neutral, (int, float)):
        return isinstance(value, (int, float)) and value == neutral
    return value == neutral


# Parameters of OpenAI's API or llama-server's that change the answer and are not implemented here: each is
# accepted only at a neutral value (the answer is then the one without it), any other value is a 400 naming it.
# Parameters whose neutral values are all numbers are numbers (a string or NaN is refused as such).
NOT_IMPLEMENTED: dict[str, tuple] = {
    "top_logprobs": (0,), "n_probs": (0,),              # token probabilities (chat's top_logprobs is a field)
    "post_sampling_probs": (False,), "return_tokens": (False,),
    "presence_penalty": (0,), "frequency_penalty": (0,),                    # penalties
    "repeat_penalty": (1,), "repetition_penalty": (1,), "dry_multiplier": (0,),
    "logit_bias": ({},), "grammar": ("",), "json_schema": (), "response_format": ({"type": "text"},),
    "typical_p": (1,), "mirostat": (0,), "xtc_probability": (0,), "dynatemp_range": (0,), "top_n_sigma": (-1, 0),
    "min_keep": (0, 1), "samplers": (), "t_max_predict_ms": (0,), "n_indent": (0,),
    "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],), "function_call": ("none", "auto"),
    "reasoning_effort": ("none",), "verbosity": (), "modalities": (["text"],), "audio": (),
    "web_search_options": (), "chat_template": (), "chat_template_kwargs": ({},),
}
# Parameters that change nothing here: accepted and not used. Metadata (user, metadata, store, service_tier,
# prompt_cache_key, safety_identifier), tool settings without tools (parallel_tool_calls), OpenAI's predicted
# output (a speed hint), llama-server's cache and slot hints, and the settings of samplers that are off here
# (mirostat's tau/eta without mirostat, DRY's and XTC's without their multiplier/probability, the penalties'
# window without a penalty, the dynamic temperature's exponent without its range, n_keep without context shift).
INERT = frozenset({
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "parallel_tool_calls",
    "prediction", "cache_prompt", "id_slot", "timings_per_token", "return_progress", "mirostat_tau", "mirostat_eta",
    "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "xtc_threshold",
    "repeat_last_n", "penalty_last_n", "dynatemp_exponent", "n_keep",
})
_HINTS = {"n_predict": "use max_tokens", "messages": "chat messages go to POST /v1/chat/completions",
          "prompt": "a raw prompt goes to POST /v1/completions", "max_completion_tokens": "use max_tokens"}


def calibrations() -> tuple[tuple[str, ...], str]:
    """(choices, default) of LoGo's ``calibration``: the router's own (logo_cpp.router.CALIBRATIONS and
    DEFAULT_CALIBRATION), so the server accepts exactly what LoGo does. A router without calibrated routing
    computes the paper's raw signal, which is calibration "none"."""
    from .. import router

    return tuple(getattr(router, "CALIBRATIONS", ("none",))), getattr(router, "DEFAULT_CALIBRATION", "none")


def _shown(value: Any) -> str:
    """A JSON value as the client wrote it, for messages: "a", 12, true, null, NaN, a list, an object."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, ensure_ascii=False)  # floats as JSON spells them: NaN, Infinity, -Infinity
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> Any:
    """A JSON number, finite: bools and strings are refused (pydantic would read true as 1.0 and "0.5" as
    0.5), NaN and infinities too (pydantic checks bounds first, so NaN got "should be <= 2")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {_shown(value)}")
    return value


def _integer(value: Any) -> Any:
    """A JSON number (pydantic then refuses fractions and non-finite values, and checks the field's bounds);
    bools and strings are refused. An integral float (1e30, 8.0) reads as its integer, so 1e30 and 10**30 get
    the same bound's message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be an integer, got {_shown(value)}")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _float32(value: float, what: str) -> float:
    """``value`` when the core's float32 holds it, else ValueError "must be <what>" (a larger one would be inf)."""
    if not abs(value) <= FLOAT32_MAX:
        raise ValueError(f"must be {what}, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    """A JSON boolean: "yes", 1 or "true" are refused (pydantic's lax mode reads them as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_shown(value)}")
    return value


def _without_nulls(data: Any) -> Any:
    # OpenAI's API and llama-server take null as "the default": drop such keys before validation (a required
    # field sent as null then reads as missing).
    return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class _Body(BaseModel):
    """A JSON object of the request: null fields take their defaults."""

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        return _without_nulls(data)


class ApiError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class LogoOptions(_Body):
    """The ``logo`` extension: how LoGo routes this request (server defaults for what is left out)."""

    model_config = ConfigDict(extra="forbid")
    k: Optional[int] = Field(default=None, ge=1, le=INT32_MAX)
    signal: Optional[Literal["norm", "entropy"]] = None
    probe: Optional[Literal["base", "all"]] = None
    calibration: Optional[str] = None
    weights: Optional[Literal["signal", "softmax"]] = None  # LoGo's mixture weights (logo_cpp.router.WEIGHTINGS)
    temperature: Optional[float] = Field(default=None, gt=0)  # LoGo's softmax temperature, not sampling's

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v):
        return _integer(v)

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, v):
        return _number(v)

    @field_validator("temperature")
    @classmethod
    def _temperature_float32(cls, v):
        return None if v is None else _float32(v, "a finite float32 > 0")

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v):
        choices, _ = calibrations()
        if v is not None and v not in choices:
            raise ValueError(f"unknown calibration {v!r}; use one of {', '.join(choices)}")
        return v


class LoraEntry(_Body):
    """llama-server's per-request adapter scale: ``{"id": <index in /lora-adapters>, "scale": <float>}``."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0)
    scale: float

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v):
        return _integer(v)

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_is_a_number(cls, v):
        return _number(v)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not mixture_weight_ok(v):
            raise ValueError(f"must be {MIXTURE_WEIGHT_RANGE}, got {_shown(v)}")
        return v


class StreamOptions(_Body):
    include_usage: bool = False

    @field_validator("include_usage", mode="before")
    @classmethod
    def _flag(cls, v):
        return _boolean(v)


class _Common(_Body):
    """Parameters completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = "logo"
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=INT32_MAX)
    min_p: float = Field(default=0.05, ge=0.0, lt=1.0)
    # OpenAI's seed is an int64; negatives are refused (the core's seed is a uint64: Model.generate takes [0, 2**64)).
    seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    ignore_eos: bool = False  # llama-server's extension (benchmarks: always the full max_tokens)
    # logo-cpp's extensions
    adapters: Optional[Union[Literal["auto", "none"], dict[str, float]]] = None
    logo: Optional[LogoOptions] = None
    lora: Optional[list[LoraEntry]] = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data):
        """Refuses unknown fields and NOT_IMPLEMENTED ones away from their neutral values (null is the default
        and passes); drops what passes, so the fields below are the ones this server implements."""
        if not isinstance(data, dict):
            return data
        kept = {}
        for name, value in data.items():
            if value is None:
                continue
            if name in cls.model_fields:  # implemented by this request kind (chat's top_logprobs)
                kept[name] = value
            elif name in NOT_IMPLEMENTED:
                _check_neutral(name, value)
            elif name not in INERT:
                hint = f"; {_HINTS[name]}" if name in _HINTS else ""
                raise _Unknown(name, f"'{name}' is not a parameter this server knows{hint} (unknown parameters are "
                                     f"refused, as OpenAI's API does, rather than ignored)")
        return kept

    @field_validator("temperature", "top_p", "min_p", mode="before")
    @classmethod
    def _numbers(cls, v):
        return _number(v)

    @field_validator("stream", "ignore_eos", "echo", mode="before", check_fields=False)  # echo: completions only
    @classmethod
    def _flags(cls, v):
        return _boolean(v)

    @field_validator("top_k", "n", "seed", "max_tokens", "max_completion_tokens", "best_of", "top_logprobs",
                     mode="before", check_fields=False)  # the last four are fields of one request kind only
    @classmethod
    def _integers(cls, v):
        return _integer(v)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list):
            raise ValueError(f"must be a string or a list of strings, got {_shown(v)}")
        for i, s in enumerate(stops):
            if not isinstance(s, str):
                raise ValueError(f"item {i} must be a string, got {_shown(s)}")
            if not s:
                raise ValueError("stop strings must not be empty")
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stops

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, v):
        forms = "'auto', 'none' or a mixture {\"adapter name\": weight, ...}"
        if v in ("auto", "none"):
            return v
        if not isinstance(v, dict):
            raise ValueError(f"must be {forms}, got {_shown(v)}")
        if not v:
            raise ValueError("a mixture names at least one adapter (or use \"none\")")
        for name, weight in v.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"the weight of adapter {name!r} must be a number, got {_shown(weight)}")
            if not mixture_weight_ok(weight):
                raise ValueError(f"the weight of adapter {name!r} must be {MIXTURE_WEIGHT_RANGE}, got {_shown(weight)}")
        return v

    @model_validator(mode="after")
    def _combinations(self):
        if self.lora is not None and self.adapters is not None:
            raise _Conflict("lora", "give either 'adapters' or 'lora', not both")
        if self.logo is not None and (isinstance(self.adapters, dict) or self.adapters == "none" or self.lora is not None):
            raise _Conflict("logo", "'logo' options apply to routed requests; this one has a fixed mixture")
        if self.stream_options is not None and not self.stream:
            # OpenAI's API refuses it too: the options only shape a stream, and a client sending them without
            # one most likely expected a stream.
            raise _Conflict("stream_options", "'stream_options' is only allowed when 'stream' is true")
        return self

    def sampling(self) -> dict:
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    stop=list(self.stop or []), ignore_eos=self.ignore_eos)


class CompletionRequest(_Common):
    """POST /v1/completions. ``prompt``: a string, a list of token ids, or a list of either (one choice each)."""

    prompt: Union[str, list[int], list[Union[str, list[int]]]]
    max_tokens: Optional[int] = Field(default=16, ge=0, le=INT32_MAX)  # OpenAI's default for completions
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    # OpenAI's legacy completions: the log-probability of each token and of its `logprobs` most likely alternatives
    # (OpenAI allows at most 5; this server MAX_TOP_LOGPROBS, as chat's top_logprobs). null: none.
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs(cls, v):
        return _integer(v)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        forms = "a string, a list of token ids, or a list of strings and token-id lists"
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be {forms}, got {_shown(v)}")
        if v and _is_token(v[0]):  # one prompt of token ids
            bad = next((j for j, t in enumerate(v) if not _is_token(t)), None)
            if bad is not None:
                raise ValueError(f"token {bad} must be an integer id, got {_shown(v[bad])}")
            return v
        for i, item in enumerate(v):  # several prompts
            if isinstance(item, list):
                bad = next((j for j, t in enumerate(item) if not _is_token(t)), None)
                if bad is not None:
                    raise ValueError(f"item {i}: token {bad} must be an integer id, got {_shown(item[bad])}")
            elif not isinstance(item, str):
                raise ValueError(f"item {i} must be a string or a list of token ids, got {_shown(item)}")
        return v

    @model_validator(mode="after")
    def _completion_only(self):
        if self.echo:
            raise _Unsupported("echo")
        if self.best_of not in (None, 1):
            raise _Unsupported("best_of")
        if self.suffix:
            raise _Unsupported("suffix")
        return self

    def logprob_options(self) -> dict:
        """The runtime's logprobs / top_logprobs for this request."""
        return dict(logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0)

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p)):
            return [p]
        if not p:
            raise ApiError(400, "prompt is empty", param="prompt")
        return list(p)


class ContentPart(_Body):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None


# The fields of a chat message in OpenAI's API (name, tool_call_id and refusal are accepted and not used: the chat
# template renders roles and content only; tool_calls and function_call are refused when not empty). Any other field
# is refused naming it, as OpenAI's API does ("Additional properties are not allowed ('id' was unexpected) -
# 'messages.0'"): another server's message field (a reasoning text, a prefix flag) may change the answer there.
MESSAGE_FIELDS = ("role", "content", "name", "tool_call_id", "refusal", "tool_calls", "function_call")


class ChatMessage(_Body):
    model_config = ConfigDict(extra="ignore")  # unknown fields are refused by ChatRequest, naming the message
    role: str  # one of logo_cpp.model.CHAT_ROLES (checked below, with a message naming the accepted ones)
    content: Optional[Union[str, list[ContentPart]]] = None  # required but for assistant messages (ChatRequest)
    tool_calls: Optional[list[Any]] = None      # refused when not empty: this server has no tools
    function_call: Optional[Any] = None

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, v):
        from ..model import chat_role_error

        problem = chat_role_error(v)
        if problem is not None:
            raise ValueError(problem if isinstance(v, str) else f"{_shown(v)} is not a chat role; "
                             + problem.split("; ", 1)[1])
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v):
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be a string or a list of content parts, got {_shown(v)}")
        for i, part in enumerate(v):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError(f"part {i} must be an object with a string 'type' (e.g. {{\"type\": \"text\", "
                                 f"\"text\": \"...\"}}), got {_shown(part)}")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"part {i} is a text part; its 'text' must be a string, got {_shown(part.get('text'))}")
        return v

    def text(self, index: int) -> str:
        """The content as one string (text parts joined). ApiError 400 naming ``messages.<index>.content`` (the
        server's form of a field path everywhere, as OpenAI's ``param``) for other parts or a NUL character."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            text = self.content
        else:
            parts = []
            for part in self.content:
                if part.type != "text" or part.text is None:
                    raise ApiError(400, f"messages.{index}.content: only text parts are supported, got {part.type!r}",
                                   param=f"messages.{index}.content")
                parts.append(part.text)
            text = "".join(parts)
        if "\0" in text:  # libllama's chat templates take C strings, which end at the first NUL
            raise ApiError(400, f"messages.{index}.content: holds a NUL character (\\u0000), which chat templates "
                                f"cannot carry", param=f"messages.{index}.content")
        return text


class ChatRequest(_Common):
    """POST /v1/chat/completions: the model's chat template over ``messages``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=0, le=INT32_MAX)  # None: until the end of text or context
    max_completion_tokens: Optional[int] = Field(default=None, ge=0, le=INT32_MAX)
    # OpenAI's chat log-probabilities: each content token's, and top_logprobs alternatives (needs logprobs: true).
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs(cls, v):
        return _boolean(v)

    @model_validator(mode="before")
    @classmethod
    def _message_fields(cls, data):
        messages = data.get("messages") if isinstance(data, dict) else None
        for i, message in enumerate(messages if isinstance(messages, list) else []):
            if not isinstance(message, dict):
                continue
            for name, value in message.items():
                if name not in MESSAGE_FIELDS and value is not None:  # null is "left out", as at the top level
                    raise _Unknown(f"messages.{i}.{name}",
                                   f"messages.{i}.{name}: '{name}' is not a field of a chat message this server "
                                   f"knows ({', '.join(MESSAGE_FIELDS)}); unknown fields are refused, as OpenAI's API "
                                   f"does, rather than ignored")
        return data

    @model_validator(mode="after")
    def _chat_only(self):
        for i, m in enumerate(self.messages):
            # OpenAI's API: content is required, but an assistant message may have none (it had tool calls).
            if m.content is None and m.role != "assistant":
                raise _Conflict(f"messages.{i}.content", f"messages.{i}.content: a required field is missing (a "
                                f"{m.role} message needs content, a string or a list of content parts; only assistant "
                                f"messages may leave it out)")
            for name in ("tool_calls", "function_call"):
                if getattr(m, name):
                    raise _Unsupported(f"messages.{i}.{name}", "this server has no tools")
        if self.top_logprobs and not self.logprobs:
            raise _Conflict("top_logprobs", f"top_logprobs ({self.top_logprobs}) needs logprobs: true, as in OpenAI's API")
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise _Conflict("max_completion_tokens", f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                            f"({self.max_completion_tokens}) differ: give one of them (max_completion_tokens is "
                            f"OpenAI's current name for max_tokens)")
        return self

    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_options(self) -> dict:
        """The runtime's logprobs / top_logprobs for this request."""
        return dict(logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0)


class _Unsupported(ValueError):
    def __init__(self, param: str, why: str = "it would change the answer"):
        super().__init__(f"'{param}' is not supported by this server ({why})")
        self.param = param


class _Unknown(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _check_neutral(name: str, value: Any) -> None:
    """Raises for a NOT_IMPLEMENTED parameter away from its neutral values (naming them)."""
    neutral = NOT_IMPLEMENTED[name]
    if neutral and all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in neutral):
        try:
            _number(value)
        except ValueError as exc:
            raise _Conflict(name, f"{name}: {exc}") from None
    if any(_same(value, n) for n in neutral):
        return
    shown = " or ".join(json.dumps(n) for n in neutral)
    raise _Unsupported(name, f"it would change the answer; only {shown} (no effect) is accepted" if neutral
                       else "it would change the answer; leave it out or null")


class _Conflict(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def parse(kind: type[BaseModel], body: Any):
    """Validates a decoded JSON body; every problem becomes a 400 ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    bad = _lone_surrogate(body, [])
    if bad is not None:
        param, index, char = bad
        raise ApiError(400, f"{param or 'a key'}: holds a lone surrogate U+{ord(char):04X} at index {index}; "
                            f"JSON strings must be valid Unicode (UTF-8 cannot encode it)", param=param or None)
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, (_Unsupported, _Conflict, _Unknown)):
            code = {_Unsupported: "unsupported_parameter", _Unknown: "unknown_parameter"}.get(type(cause))
            return _raise(400, str(cause), cause.param, code)
        # A union reports one error per member type; its first location names the field well enough.
        loc = [str(p) for p in err["loc"] if not _is_type_tag(p)]
        param = ".".join(loc) or None
        message = err["msg"].removeprefix("Value error, ")
        # pydantic names our classes ("a valid dictionary or instance of ChatMessage"): JSON has objects.
        message = re.sub(r"a valid dictionary( or instance of \w+)?", "a JSON object", message)
        if err["type"] == "missing":
            message = "a required field is missing"
        return _raise(400, f"{param}: {message}" if param else message, param, None)


def _lone_surrogate(value: Any, path: list) -> Optional[tuple[str, int, str]]:
    """The first string in a decoded JSON value holding a lone surrogate (json accepts escapes like "\\ud800"
    that are not Unicode text): (dotted path, index, character), or None. Checked once for the whole body, so
    no field can carry one to the tokenizer or the C++ core."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")       # surrogates are the only str content UTF-8 cannot encode
            return None
        except UnicodeEncodeError as exc:
            return ".".join(map(str, path)), exc.start, value[exc.start]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path) if isinstance(key, str) else None
        found = found or _lone_surrogate(item, [*path, key])
        if found:
            return found
    return None


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_type_tag(part) -> bool:
    # pydantic names union members in locations ("str", "list[int]", "literal['auto','none']"...): not fields.
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or part.startswith("function-"))


def _raise(status, message, param, code):
    raise ApiError(status, message, param=param, code=code)
