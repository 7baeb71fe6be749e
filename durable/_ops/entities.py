"""Entities in the ops HTTP API (``/v1/entities``).

Routes::

    GET    /v1/entities?name=&key_prefix=&last_modified_from=&last_modified_to=&include_state=&limit=
                   &continuation_token=               -> [{entity_id, name, key, last_modified_at[, state]}]
    GET    /v1/entities/{name}/{key}                  -> {"state": ...} | 404 | 501
    POST   /v1/entities/{name}/{key}/{operation}      body: input -> 202 | 501

Entity names are case-insensitive (stored lower-cased) and cannot contain ``@``; a client without
entity support answers 501.
"""

from __future__ import annotations

from typing import Any

from .._client import AsyncClient
from .._core.serialization import PayloadTooLargeError, SerializationError
from . import views as views
from .http import (
    HTTPError,
    Request,
    Response,
    Route,
    datetime_param,
    int_param,
    json_body,
    json_response,
    payload_error,
)

__all__ = ["CONTINUATION_HEADER", "MAX_LIST_LIMIT", "EntityRoutes", "token_header"]

#: Largest page of ``GET /v1/orchestrations`` and ``GET /v1/entities``.
MAX_LIST_LIMIT = 1000
#: The response header holding the token of the next page of a list.
CONTINUATION_HEADER = "X-Continuation-Token"


def token_header(token: str | None) -> dict[str, str]:
    """The continuation header of a page, when there is a next page."""
    return {CONTINUATION_HEADER: token} if token else {}


class EntityRoutes:
    """The ``/v1/entities`` routes, served through ``client``."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def routes(self) -> list[Route]:
        return [
            Route(("v1", "entities"), {"GET": self.list_entities}),
            Route(("v1", "entities", None, None), {"GET": self.get_entity}),
            Route(("v1", "entities", None, None, None), {"POST": self.signal_entity}),
        ]

    @staticmethod
    def _entity_id(name: str, key: str) -> str:
        """``@name@key``; entity names are case-insensitive and stored lower-cased."""
        if "@" in name:
            raise HTTPError(400, "invalid_entity_id", f"entity names cannot contain '@': {name!r}")
        return f"@{name.lower()}@{key}"

    async def list_entities(self, request: Request, params: list[str]) -> Response:
        """Entities newest first; with ``name``/``key_prefix``/``continuation_token``, pages in id
        order (the next page's token in ``X-Continuation-Token``)."""
        limit = int_param(request, "limit", 100, 1, MAX_LIST_LIMIT)
        name, key_prefix = request.param("name"), request.param("key_prefix")
        include_state = (request.param("include_state") or "false").lower() in ("1", "true", "yes")
        token = request.param("continuation_token")
        filters: dict[str, Any] = {
            "name": name,
            "key_prefix": key_prefix,
            "last_modified_from": datetime_param(request, "last_modified_from"),
            "last_modified_to": datetime_param(request, "last_modified_to"),
            "include_state": include_state,
        }
        if name is not None and "@" in name:
            raise HTTPError(400, "invalid_entity_id", f"entity names cannot contain '@': {name!r}")
        try:
            if name is None and key_prefix is None and token is None:
                states = await self.client.list_entities(**filters, limit=limit)
                next_token = None
            else:
                page = await self.client.entity_page(**filters, limit=limit, continuation_token=token)
                states, next_token = list(page), page.continuation_token
        except ValueError as exc:
            raise HTTPError(400, "invalid_parameter", str(exc)) from None
        rows = [views.entity_row(s, include_state) for s in states]
        return json_response(200, rows, token_header(next_token))

    async def get_entity(self, request: Request, params: list[str]) -> Response:
        entity_id = self._entity_id(*params)
        try:
            body = await views.entity_view(self.client, entity_id)
        except views.EntitiesUnavailableError as exc:
            raise _entities_unavailable(exc) from None
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, "invalid_entity_id", str(exc)) from None
        if body is None:
            raise HTTPError(404, "not_found", f"no entity with id {entity_id!r}")
        return json_response(200, body)

    async def signal_entity(self, request: Request, params: list[str]) -> Response:
        name, key, operation = params
        entity_id = self._entity_id(name, key)
        data = json_body(request)
        try:
            body = await views.signal_entity_view(self.client, entity_id, operation, data)
        except views.EntitiesUnavailableError as exc:
            raise _entities_unavailable(exc) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise payload_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, "invalid_request", str(exc)) from None
        return json_response(202, body)


def _entities_unavailable(exc: views.EntitiesUnavailableError) -> HTTPError:
    return HTTPError(501, "not_implemented", str(exc))
