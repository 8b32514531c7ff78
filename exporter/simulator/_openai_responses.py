"""The OpenAI Responses API (`POST /openai/v1/responses`), JSON and SSE, with its stored responses.

A reply stops at `max_output_tokens` when its output reaches it: status `incomplete`,
`incomplete_details.reason` `max_output_tokens`, and a stream ends on `response.incomplete`
instead of `response.completed`. A background request (`background: true`, not streamed) is
answered `queued` with no usage, as OpenAI answers it; retrieving it later
(`GET .../responses/{id}`) gives the finished response with its usage. Token counting
(`POST .../responses/input_tokens`), cancelling, deleting and listing input items are answered too,
so that an app's every Responses call has a reply.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from exporter.simulator import _openai
from exporter.simulator._model import BadRequest, Generator, Reply, Request, Usage

WIRE_FORMAT = "openai_responses"
MAX_STORED = 1000  # responses kept for retrieval; the oldest go first (a test asks few back)
_ID_ALPHABET = "0123456789abcdef"


@dataclass
class ResponsesRequest(Request):
    """What a Responses request adds to a chat request's shape."""

    background: bool = False
    store: bool = True
    instructions: str | None = None


def parse(body: dict[str, Any], headers: dict[str, str]) -> ResponsesRequest:
    model, given = body.get("model"), body.get("input")
    if not isinstance(model, str) or not model:
        raise BadRequest("Missing required parameter: 'model'.")
    if not isinstance(given, str | list) or not given:
        raise BadRequest("Missing required parameter: 'input'.")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    instructions = body.get("instructions")
    chars = len(instructions) if isinstance(instructions, str) else 0
    chars += sum(len(_text(item)) for item in items if isinstance(item, dict))
    max_tokens = body.get("max_output_tokens")
    return ResponsesRequest(
        model=model,
        stream=bool(body.get("stream")),
        prompt_chars=chars,
        messages=len(items) + (1 if instructions else 0),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        thinking=bool(_openai._REASONING_MODELS.match(model)),
        background=bool(body.get("background")),
        store=body.get("store") is not False,
        instructions=instructions if isinstance(instructions, str) else None,
    )


def _text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def new_reply_ids(gen: Generator, reply: Reply) -> None:
    reply.id = "resp_" + gen.token_id(48, _ID_ALPHABET)
    reply.extra["message_id"] = "msg_" + gen.token_id(48, _ID_ALPHABET)
    reply.extra["reasoning_id"] = "rs_" + gen.token_id(48, _ID_ALPHABET)
    reply.extra["created_at"] = str(int(time.time()))


def wire_usage(usage: Usage) -> dict[str, Any]:
    """`input_tokens` includes cached input; `output_tokens` includes reasoning."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _stopped_early(reply: Reply) -> bool:
    limit = reply.request.max_tokens
    return limit is not None and reply.usage.output_tokens >= limit


def _response(reply: Reply, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response object in `status`; usage only once the model has run."""
    request = reply.request
    assert isinstance(request, ResponsesRequest)
    final = status in ("completed", "incomplete")
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": reply.id,
        "object": "response",
        "created_at": int(reply.extra["created_at"]),
        "status": status,
        "background": request.background,
        "completed_at": int(time.time()) if final else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.instructions,
        "max_output_tokens": request.max_tokens,
        "model": request.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium" if request.thinking else None, "summary": None},
        "service_tier": "default",
        "store": request.store,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": wire_usage(reply.usage) if final else None,
        "user": None,
        "metadata": {},
    }


def _final_status(reply: Reply) -> str:
    return "incomplete" if _stopped_early(reply) else "completed"


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message(reply: Reply, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    item_id = reply.extra["message_id"]
    return {"id": item_id, "type": "message", "status": status, "content": content,
            "role": "assistant"}  # fmt: skip


def _reasoning(reply: Reply) -> list[dict[str, Any]]:
    """A reasoning model's reasoning item (its summary not asked for), before the message."""
    if not reply.usage.reasoning_tokens:
        return []
    return [{"id": reply.extra["reasoning_id"], "type": "reasoning", "summary": []}]


def final_body(reply: Reply) -> dict[str, Any]:
    status = _final_status(reply)
    output = [*_reasoning(reply), _message(reply, status, reply.text)]
    return _response(reply, status, output)


def json_body(reply: Reply, store: Store) -> dict[str, Any]:
    """The finished response; for a background request, the `queued` answer (and the finished
    one kept for retrieval)."""
    request = reply.request
    assert isinstance(request, ResponsesRequest)
    body = final_body(reply)
    if request.store or request.background:
        store.put(body)
    return _response(reply, "queued", []) if request.background else body


def sse_frames(reply: Reply, store: Store, interrupted: bool) -> list[bytes]:
    """The event sequence OpenAI sends: created, (queued,) in_progress, the reasoning item, the
    message item with its text part and deltas, and the terminal `response.completed` (or
    `response.incomplete`)."""
    request = reply.request
    assert isinstance(request, ResponsesRequest)
    frames: list[bytes] = []

    def event(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(frames), **fields}
        frames.append(_frame(kind, payload))

    first = "queued" if request.background else "in_progress"
    event("response.created", response=_response(reply, first, []))
    if request.background:
        event("response.queued", response=_response(reply, "queued", []))
    event("response.in_progress", response=_response(reply, "in_progress", []))
    reasoning = _reasoning(reply)
    for item in reasoning:
        event("response.output_item.added", output_index=0, item=item)
        event("response.output_item.done", output_index=0, item=item)
    index, item_id = len(reasoning), reply.extra["message_id"]
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    event("response.output_item.added", output_index=index,
          item=_message(reply, "in_progress", None))  # fmt: skip
    event("response.content_part.added", **where, part=_text_part(""))
    for part in reply.text_chunks():
        event("response.output_text.delta", **where, delta=part, logprobs=[])
        if interrupted:
            return frames
    status = _final_status(reply)
    event("response.output_text.done", **where, text=reply.text, logprobs=[])
    event("response.content_part.done", **where, part=_text_part(reply.text))
    event("response.output_item.done", output_index=index,
          item=_message(reply, status, reply.text))  # fmt: skip
    body = final_body(reply)
    if request.store or request.background:
        store.put(body)
    event(f"response.{status}", response=body)
    return frames


def _frame(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def error_body(status: int, message: str, model: str) -> dict[str, Any]:
    return _openai.error_body(status, message, model, groq=False)


class Store:
    """Responses kept for retrieval by id, the oldest dropped past MAX_STORED."""

    def __init__(self) -> None:
        self._bodies: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def put(self, body: dict[str, Any]) -> None:
        self._bodies[body["id"]] = body
        while len(self._bodies) > MAX_STORED:
            self._bodies.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any] | None:
        return self._bodies.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._bodies.pop(response_id, None) is not None


def _not_found(response_id: str) -> JSONResponse:
    message = f"Response with id '{response_id}' not found."
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip
    return JSONResponse(body, status_code=404)


def routes(prefix: str, store: Store) -> list[Route]:
    """Everything under `{prefix}/responses` but creating one (the simulator's `_answer` does
    that): none of these is a model call."""

    async def retrieve(http: HttpRequest) -> JSONResponse:
        response_id = http.path_params["response_id"]
        body = store.get(response_id)
        return _not_found(response_id) if body is None else JSONResponse(body)

    async def delete(http: HttpRequest) -> JSONResponse:
        response_id = http.path_params["response_id"]
        if not store.delete(response_id):
            return _not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def cancel(http: HttpRequest) -> JSONResponse:
        response_id = http.path_params["response_id"]
        body = store.get(response_id)
        if body is None:
            return _not_found(response_id)
        if not body.get("background"):
            error = error_body(400, "Only background responses can be cancelled.", "")
            return JSONResponse(error, status_code=400)
        return JSONResponse(body)  # it finished already: cancelling changes nothing

    async def input_items(http: HttpRequest) -> JSONResponse:
        response_id = http.path_params["response_id"]
        if store.get(response_id) is None:
            return _not_found(response_id)
        listing: dict[str, Any] = {"object": "list", "data": [], "first_id": None, "last_id": None,
                   "has_more": False}  # fmt: skip
        return JSONResponse(listing)

    async def input_tokens(http: HttpRequest) -> JSONResponse:
        try:
            request = parse(json.loads(await http.body()), {})
        except (BadRequest, ValueError, TypeError, AttributeError) as exc:
            return JSONResponse(error_body(400, str(exc), ""), status_code=400)
        tokens = request.prompt_chars // 4 + 4 * request.messages + 3  # as Generator.usage counts
        return JSONResponse({"object": "response.input_tokens", "input_tokens": tokens})

    base = prefix + "/responses"
    return [
        Route(base + "/input_tokens", input_tokens, methods=["POST"]),
        Route(base + "/{response_id}", retrieve, methods=["GET"]),
        Route(base + "/{response_id}", delete, methods=["DELETE"]),
        Route(base + "/{response_id}/cancel", cancel, methods=["POST"]),
        Route(base + "/{response_id}/input_items", input_items, methods=["GET"]),
    ]
