"""JSON encoding and decoding of events: the single place bytes become models and back.

Consumers call :func:`decode`; any malformed payload (not JSON, wrong shape, a bad field)
raises :class:`SchemaError`, whose one-line message names the offending field, so that a
consumer can dead-letter the message with a readable reason and carry on.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .events import (
    ClickEvent,
    DeadLetter,
    EpochRequest,
    PctrVersion,
    PolicyVersion,
    QueryEvent,
    ResponseEvent,
    RolloutEvent,
)

M = TypeVar("M", bound=BaseModel)

EVENT_TYPES: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (QueryEvent, ResponseEvent, ClickEvent, PolicyVersion, PctrVersion, RolloutEvent, EpochRequest, DeadLetter)
}


class SchemaError(ValueError):
    """A payload that does not match its schema. ``field`` is a dotted path, or ``<payload>``."""

    def __init__(self, model: str, field: str, message: str):
        self.model = model
        self.field = field
        self.message = message
        super().__init__(f"{model}: field '{field}': {message}")


def encode(event: BaseModel) -> bytes:
    """Serialize an event to compact UTF-8 JSON."""
    return event.model_dump_json().encode("utf-8")


def to_dict(event: BaseModel) -> dict:
    """The JSON-compatible dict of an event (what :func:`encode` writes)."""
    return event.model_dump(mode="json")


def decode(data: bytes | str | dict, model: type[M]) -> M:
    """Parse ``data`` into ``model`` or raise :class:`SchemaError` naming the first bad field.

    Bytes and text go straight to pydantic's JSON parser (``model_validate_json``): no Python
    dict in between, which halves the cost of decoding a query with 100 candidates.
    """
    name = model.__name__
    try:
        if isinstance(data, (bytes, bytearray, str)):
            return model.model_validate_json(data)
        if not isinstance(data, dict):
            raise SchemaError(name, "<payload>", f"expected a JSON object, got {type(data).__name__}")
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<payload>"
        kind = err.get("type", "")
        if kind == "json_invalid":
            msg = f"not JSON ({err.get('msg', '').removeprefix('Invalid JSON: ')})"
        elif kind == "model_type" and loc == "<payload>":
            msg = "expected a JSON object"
        else:
            msg = err.get("msg", "invalid")
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 and kind != "json_invalid" else ""
        raise SchemaError(name, loc, f"{msg}{more}") from None
