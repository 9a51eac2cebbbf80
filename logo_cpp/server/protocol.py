"""The request bodies the server accepts: OpenAI's completion and chat-completion parameters, llama-server's
per-request ``lora``, and logo-cpp's ``adapters`` and ``logo`` extensions, validated with pydantic.

Unknown fields are ignored (clients and SDKs send fields of their own); known OpenAI parameters this server does
not implement are refused when they would change the result (``n`` is supported, ``logprobs`` is not), so a
client never gets a silently different answer. Defaults follow llama-server where OpenAI leaves the choice to
the server (``temperature`` 0.8, ``top_k`` 40, ``top_p`` 0.95, ``min_p`` 0.05); ``null`` means the default, as
in OpenAI's API and llama-server.

Numbers must be JSON numbers (``true`` or ``"0.5"`` for a temperature is refused, not read as 1 or 0.5), and
finite. Fields that take several forms (``prompt``, ``stop``, ``adapters``, a message's ``content``) are checked
by hand before pydantic sees them: a union's own error names only its first member ("Input should be 'auto'
or 'none'" for a mixture with a bad weight), where these messages say what was wrong and what is accepted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_STOP = 16      # OpenAI allows 4; llama-server any number: a bound keeps the stop search cheap
MAX_CHOICES = 16   # n (and prompts x n) per request; each choice takes a slot
FLOAT32_MAX = 3.4028234663852886e38  # mixture weights reach the C++ core as float32: larger ones become inf


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
    """A JSON number (pydantic then refuses fractions and non-finite values); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be an integer, got {_shown(value)}")
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
    k: Optional[int] = Field(default=None, ge=1)
    signal: Optional[Literal["norm", "entropy"]] = None
    probe: Optional[Literal["base", "all"]] = None
    calibration: Optional[str] = None

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v):
        return _integer(v)

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
        if not abs(v) <= FLOAT32_MAX:
            raise ValueError(f"must be a finite float32, got {v!r}")
        return v


class StreamOptions(_Body):
    include_usage: bool = False


class _Common(_Body):
    """Parameters completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = "logo"
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, lt=1.0)
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
    # OpenAI parameters that would change the answer and are not implemented: only their neutral value passes
    # (any other value, of any type, is "not supported").
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, Any]] = None

    @field_validator("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", mode="before")
    @classmethod
    def _numbers(cls, v):
        return _number(v)

    @field_validator("top_k", "n", "seed", "max_tokens", "max_completion_tokens", "best_of", mode="before",
                     check_fields=False)  # the last three are fields of one request kind only
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
            if not abs(weight) <= FLOAT32_MAX:
                raise ValueError(f"the weight of adapter {name!r} must be a finite float32, got {_shown(weight)}")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        for name, neutral in (("logprobs", (None, False, 0)), ("top_logprobs", (None, 0)),
                              ("presence_penalty", (0.0,)), ("frequency_penalty", (0.0,))):
            if getattr(self, name) not in neutral:
                raise _Unsupported(name)
        if self.logit_bias:
            raise _Unsupported("logit_bias")
        if self.lora is not None and self.adapters is not None:
            raise _Conflict("lora", "give either 'adapters' or 'lora', not both")
        if self.logo is not None and (isinstance(self.adapters, dict) or self.adapters == "none" or self.lora is not None):
            raise _Conflict("logo", "'logo' options apply to routed requests; this one has a fixed mixture")
        return self

    def sampling(self) -> dict:
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    stop=list(self.stop or []), ignore_eos=self.ignore_eos)


class CompletionRequest(_Common):
    """POST /v1/completions. ``prompt``: a string, a list of token ids, or a list of either (one choice each)."""

    prompt: Union[str, list[int], list[Union[str, list[int]]]]
    max_tokens: Optional[int] = Field(default=16, ge=0)  # OpenAI's default for completions
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

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


class ChatMessage(_Body):
    model_config = ConfigDict(extra="ignore")
    role: str  # one of logo_cpp.model.CHAT_ROLES (checked below, with a message naming the accepted ones)
    content: Optional[Union[str, list[ContentPart]]] = None

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
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                               param=f"messages.{index}.content")
            parts.append(part.text)
        return "".join(parts)


class ChatRequest(_Common):
    """POST /v1/chat/completions: the model's chat template over ``messages``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=0)  # None: until the end of text or of the context
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    response_format: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _chat_only(self):
        if self.tools:
            raise _Unsupported("tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise _Unsupported("response_format")
        return self

    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class _Unsupported(ValueError):
    def __init__(self, param: str):
        super().__init__(f"'{param}' is not supported by this server")
        self.param = param


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
        if isinstance(cause, (_Unsupported, _Conflict)):
            return _raise(400, str(cause), cause.param, "unsupported_parameter" if isinstance(cause, _Unsupported) else None)
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
