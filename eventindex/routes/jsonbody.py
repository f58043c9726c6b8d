"""JSON bodies that handlers read themselves, after the credential's check."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from eventindex.problems import Problem

Body = TypeVar("Body", bound=BaseModel)


async def read_json(request: Request, model: type[Body]) -> Body:
    """The body, read only now: the route's scope has been checked, so an anonymous
    caller's body is never read (FastAPI reads declared bodies before it solves
    dependencies)."""
    raw = await request.body()
    if not raw.strip():
        raise Problem(422, "empty-body", "Empty body", "The request body is empty.")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(
            400, "undecodable-body", "Undecodable body", "The request body is not UTF-8."
        ) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
