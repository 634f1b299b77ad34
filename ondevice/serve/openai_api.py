"""OpenAI's request and response shapes for ``ondevice serve``: validation and building.

Pure (no I/O, no llama.cpp): a request body in, a ``Request`` or an ``ApiError`` out; a report
in, a response body or stream chunk out.

What is refused (400, naming the parameters): anything that would change the output's
distribution and that speculative decoding does not carry end to end (the edge verifies
against the target's plain softmax at the temperature): ``top_p``, ``logit_bias``,
``presence_penalty``, ``frequency_penalty``, ``n`` > 1, ``best_of`` > 1, ``logprobs``,
``top_logprobs``, ``echo``, ``suffix``, tools and functions, a ``response_format`` other
than text, other modalities. Each is accepted at its neutral value (``top_p: 1``, ``n: 1``,
``null``, ...). Unknown parameters are refused too, as OpenAI does. Accepted without effect:
``user``, ``metadata``, ``store``, ``service_tier``, ``parallel_tool_calls``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ondevice.common import jsonout
from ondevice.common.seed import seed_problem

if TYPE_CHECKING:
    from ondevice.llm.report import Report

Kind = Literal["completion", "chat"]
MAX_STOPS = 4
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A validated completion or chat request."""

    kind: Kind
    model: str
    prompt: str | None = None  # completion
    messages: tuple[tuple[str, str], ...] = ()  # chat: (role, content)
    max_tokens: int | None = None  # None: the endpoint's default
    temperature: float = 1.0  # OpenAI's default
    seed: int | None = None  # None: the server draws one (reported in the response)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


# Parameters that would change the distribution: name -> is the value neutral?
def _none_or(*ok: Any) -> Any:
    return lambda v: v is None or any(v == o and type(v) is type(o) for o in ok)


def _number_is(target: float) -> Any:
    return lambda v: v is None or (_is_number(v) and float(v) == target)


_DISTRIBUTION: dict[Kind, dict[str, Any]] = {
    "completion": {
        "top_p": _number_is(1.0), "presence_penalty": _number_is(0.0),
        "frequency_penalty": _number_is(0.0), "logit_bias": lambda v: v is None or v == {},
        "n": _number_is(1.0), "best_of": _number_is(1.0), "logprobs": _none_or(),
        "echo": _none_or(False), "suffix": _none_or(""),
    },
    "chat": {
        "top_p": _number_is(1.0), "presence_penalty": _number_is(0.0),
        "frequency_penalty": _number_is(0.0), "logit_bias": lambda v: v is None or v == {},
        "n": _number_is(1.0), "logprobs": _none_or(False), "top_logprobs": _none_or(0),
        "tools": lambda v: v is None or v == [], "tool_choice": _none_or("none"),
        "functions": lambda v: v is None or v == [], "function_call": _none_or("none"),
        "response_format": lambda v: v is None or v == {"type": "text"},
        "modalities": lambda v: v is None or v == ["text"], "audio": _none_or(),
        "prediction": _none_or(), "reasoning_effort": _none_or(),
        "web_search_options": _none_or(),
    },
}
_COMMON = {"model", "max_tokens", "temperature", "seed", "stop", "stream", "stream_options",
           "user", "metadata", "store", "service_tier"}
_OWN = {"completion": {"prompt"},
        "chat": {"messages", "max_completion_tokens", "parallel_tool_calls"}}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; 400 for anything else."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request ({exc}). The "
                            "body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object, got "
                            f"{type(body).__name__}.")
    if b"\\ud" in raw.lower():  # only a \uXXXX escape can carry a lone surrogate
        try:
            _encode_strings(body)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start:exc.end].encode("utf-16", "surrogatepass")[2:]
            raise ApiError(400, "The request body holds a lone UTF-16 surrogate (\\u"
                                f"{int.from_bytes(bad[:2], 'little'):04x}) in a string: that is "
                                "not Unicode text. Escape characters outside the BMP as a "
                                "surrogate pair, or send them as UTF-8.") from None
    return body


def _encode_strings(obj: Any) -> None:
    """UTF-8-encode every string (keys too) of a parsed JSON value: UnicodeEncodeError names
    the first that is not Unicode text (a lone surrogate)."""
    if isinstance(obj, str):
        obj.encode("utf-8")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _encode_strings(k)
            _encode_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            _encode_strings(v)


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}: only text content parts are supported "
                                    "({\"type\": \"text\", \"text\": ...})", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty array of message objects",
                       param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(CHAT_ROLES)}; got "
                                f"{role!r}", param=f"{where}.role")
        extra = sorted(k for k, v in m.items()
                       if k not in ("role", "content", "name") and v is not None)
        if extra:
            raise ApiError(400, f"{where}: unsupported field(s) {', '.join(extra)} (only role, "
                                "content and name)", param=f"{where}.{extra[0]}")
        out.append((str(role), _text_content(m.get("content"), f"{where}.content")))
    return tuple(out)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise ApiError(400, "'prompt' must be a string (or a list of one string); token arrays "
                            "and batches of prompts are not supported", param="prompt")
    if not value:
        raise ApiError(400, "'prompt' is empty", param="prompt")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOPS} strings", param="stop")
    return tuple(s for s in stops if s)


def parse_request(kind: Kind, body: dict[str, Any]) -> Request:
    """Validate a ``/v1/completions`` (``kind`` "completion") or ``/v1/chat/completions``
    ("chat") body. Raises ApiError 400 naming the offending parameter(s)."""
    distribution = _DISTRIBUTION[kind]
    unknown = sorted(set(body) - _COMMON - _OWN[kind] - set(distribution))
    if unknown:
        raise ApiError(400, f"Unrecognized request argument(s) supplied: {', '.join(unknown)}",
                       param=unknown[0])
    unsupported = sorted(k for k, neutral in distribution.items()
                         if k in body and not neutral(body[k]))
    if unsupported:
        raise ApiError(
            400, f"Unsupported parameter(s): {', '.join(unsupported)}. coinfer's speculative "
            "decoding keeps the target model's distribution exactly and cannot carry these "
            "end to end; leave them out or at their neutral value (top_p 1, penalties 0, n 1, "
            "no logit_bias/logprobs/tools).", param=unsupported[0], code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    key = "max_tokens"
    max_tokens = body.get(key)
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        key, max_tokens = "max_completion_tokens", body["max_completion_tokens"]
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"'{key}' must be an integer >= 1, got {max_tokens!r}", param=key)
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    if not _is_number(temperature) or not 0.0 <= temperature <= 2.0:
        raise ApiError(400, f"'temperature' must be a number in [0, 2], got {temperature!r}",
                       param="temperature")
    seed = body.get("seed")
    problem = None if seed is None else seed_problem(seed)
    if problem is not None:
        raise ApiError(400, problem, param="seed")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {
            "include_usage", "include_obfuscation"}):
        raise ApiError(400, "'stream_options' supports only include_usage",
                       param="stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    return Request(
        kind=kind, model=model,
        prompt=_prompt(body.get("prompt")) if kind == "completion" else None,
        messages=_messages(body.get("messages")) if kind == "chat" else (),
        max_tokens=max_tokens, temperature=float(temperature), seed=seed,
        stop=_stop(body.get("stop")), stream=bool(stream), include_usage=include_usage,
    )


# -- responses ---------------------------------------------------------------------------

def finish_reason(report: Report) -> str:
    """OpenAI's finish_reason: "stop" at an end-of-generation token or a stop string,
    "length" when cut by max_tokens, the context or a halt (coinfer.stop_reason says which)."""
    return "stop" if report.stop_reason in ("eos", "stop") else "length"


def usage(report: Report) -> dict[str, int]:
    n = report.n_tokens if report.returned_tokens is None else report.returned_tokens
    return {"prompt_tokens": report.prompt_tokens, "completion_tokens": n,
            "total_tokens": report.prompt_tokens + n}


def coinfer_fields(report: Report) -> dict[str, Any]:
    """The response's extra ``coinfer`` object: energy, speculation and edge of the request."""
    return {
        "energy_j": report.energy_j, "energy_source": report.energy_source,
        "energy_note": report.energy_note, "j_per_token": report.j_per_token,
        "mean_power_w": report.mean_power_w, "acceptance": report.acceptance,
        "rounds": report.rounds, "mean_drafted": report.mean_drafted,
        "tokens_per_s": report.tokens_per_s, "elapsed_s": report.elapsed_s,
        "near_ties": report.near_ties,
        "edge": report.edge, "degraded": report.degraded,
        "degraded_reason": report.degraded_reason, "stop_reason": report.stop_reason,
        "policy": report.policy, "policy_settings_start": report.policy_settings_start,
        "policy_settings": report.policy_settings, "meter": report.meter,
        "meter_started_monotonic_s": report.meter_started_monotonic_s,
        "edge_connects": report.edge_connects, "seed": report.seed,
    }


def response_body(kind: Kind, rid: str, created: int, model: str, report: Report
                  ) -> dict[str, Any]:
    """The whole (non-streamed) response."""
    finish = finish_reason(report)
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None,
                                  "message": {"role": "assistant", "content": report.text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": report.text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage(report), "coinfer": coinfer_fields(report)}


def chunk_body(kind: Kind, rid: str, created: int, model: str, *, text: str | None = None,
               role: bool = False, finish: str | None = None) -> dict[str, Any]:
    """One streamed chunk: a piece of text, the chat role's opening, or the finish."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else jsonout.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
