"""``GET /v1/events/{run}/{event}`` without the framework's routing and dependencies.

A single-event lookup spent about two thirds of the service's CPU in FastAPI's layers,
routing and dependency solving (py-spy under ``wrk``), for an answer that is one index
probe. This serves the plain request (digits in range, no query string) inside every
other middleware (request log, host check, security headers, rate limit, client
certificates, the interactive claim), with the endpoint's own answer
(``routes.events.event_answer``) and the same problems. A request it does not serve whole,
such as one with a number out of range, a credential that is missing or lacks the ``read``
scope, or another method, goes on to the routed endpoint, which says what is wrong: the
API has one definition, documented in OpenAPI.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.auth import OPEN, Authenticator
from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER
from eventindex.problems import Problem, problem_of_failure
from eventindex.routes.events import event_answer
from eventindex.singles import SingleLookups

_PATH = re.compile(r"/v1/events/([0-9]{1,10})/([0-9]{1,19})")


class SingleEventFastPath:
    def __init__(self, app: ASGIApp, route: Any) -> None:
        self.app = app
        self.route = route  # the routed endpoint's, for the request log and metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        run, event = int(match[1]), int(match[2])
        if run > MAX_RUN_NUMBER or event > MAX_EVENT_NUMBER:
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        auth: Authenticator = state["auth"]
        singles: SingleLookups = state["singles"]
        path: str = scope["path"]
        try:
            principal = await auth.identify(Request(scope))
            if principal is None and not auth.required:
                principal = OPEN
            if principal is None or "read" not in principal.scopes:
                response = None  # refused: the routed endpoint's dependency says why
            else:
                state["principal"] = principal.name
                scope["route"] = self.route
                response = await event_answer(singles, run, event)
        except Problem as problem:
            response = problem.response(path)
        except Exception as exc:
            response = problem_of_failure(exc, path).response(path)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)
