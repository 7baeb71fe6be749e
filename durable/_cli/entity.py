"""``durable entity signal|get|list``.

The JSON output is the ops HTTP API's (:mod:`durable._ops_views`); see :mod:`durable._cli_ops`
for what every command shares.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._core.entities import EntityId
from .._core.serialization import PayloadTooLargeError, SerializationError
from .._ops import views as views
from .._store import queries as q
from . import common as cli

__all__ = ["register"]


def _entity_id(name: str, key: str) -> str:
    """``@name@key`` (names are case-insensitive, stored lower-cased); usage error when invalid."""
    try:
        return str(EntityId(name.lower(), key))
    except ValueError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None


async def entity_signal(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    entity_id = _entity_id(args.name, args.key)
    client = await session.client(create_hub=True)
    try:
        data = await views.signal_entity_view(client, entity_id, args.operation, args.input)
    except (views.EntitiesUnavailableError, PayloadTooLargeError) as exc:
        raise cli.CommandError(str(exc)) from None
    except (SerializationError, TypeError, ValueError) as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    text = f"Signalled {args.operation!r} to entity {entity_id!r}"
    text += f" (signal id {data['signal_id']})." if "signal_id" in data else "."
    return cli.Outcome(data, text)


async def entity_get(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    entity_id = _entity_id(args.name, args.key)
    try:
        client = await session.client()
    except cli.HubMissingError as exc:
        raise cli.CommandError(f"no entity with id {entity_id!r}: {exc}") from None
    try:
        data = await views.entity_view(client, entity_id)
    except views.EntitiesUnavailableError as exc:
        raise cli.CommandError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    if data is None:
        raise cli.CommandError(f"no entity with id {entity_id!r} in hub {session.hub!r}")
    pairs = [
        ("Entity ID", data["entity_id"]),
        ("Name", data["name"]),
        ("Key", data["key"]),
        ("Last modified", cli.fmt_iso(data.get("last_modified_at"), millis=True)),
    ]
    if "locked_by" in data:
        pairs.append(("Locked by", q.text(data["locked_by"]) or "-"))
    if "backlog" in data:
        pairs.append(("Backlog", q.text(data["backlog"])))
    pairs.append(("State", cli.compact_json(data.get("state"))))
    return cli.Outcome(data, cli.render_fields(pairs))


async def entity_list(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    name = args.name
    if name is not None and "@" in name:
        raise cli.CommandError(f"entity names cannot contain '@': {name!r}", cli.EXIT_USAGE)
    rows: list[dict[str, Any]] = []
    token: str | None = args.continuation_token
    if session.hub_exists:
        client = await session.client()
        filters: dict[str, Any] = {
            "name": name,
            "key_prefix": args.key_prefix,
            "last_modified_from": args.modified_from,
            "last_modified_to": args.modified_to,
            "include_state": args.state,
        }
        try:
            if name is None and args.key_prefix is None and token is None and not args.all:
                states = await client.list_entities(**filters, limit=args.limit)
            else:
                states = []
                while True:
                    page = await client.entity_page(**filters, limit=args.limit, continuation_token=token)
                    states.extend(page)
                    token = page.continuation_token
                    if not args.all or token is None:
                        break
        except ValueError as exc:
            raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
        rows = [views.entity_row(s, args.state) for s in states]
    more = f"more: --continuation-token {token}" if token else None
    table = [
        [
            cli.fmt_cell(r["entity_id"], 50),
            cli.fmt_cell(r["name"], 30),
            cli.fmt_cell(r["key"], 40),
            cli.fmt_iso(r["last_modified_at"]),
        ]
        for r in rows
    ]
    headers = ["entity id", "name", "key", "last modified"]
    if args.state:
        headers.append("state")
        for line, row in zip(table, rows, strict=True):
            line.append(cli.fmt_cell(row.get("state"), 40))
    if not table:
        return cli.Outcome(rows, "", note=more or "no entities found")
    return cli.Outcome(rows, cli.render_table(headers, table), note=more)


def register(commands: cli.Commands) -> None:
    """Add ``durable entity ...``."""
    esub = cli.command_group(
        commands,
        "entity",
        "signal, read and list durable entities",
        "Signal, read and list the durable entities of a hub.",
    )
    p = cli.leaf(
        esub,
        "signal",
        entity_signal,
        "send an operation to an entity",
        "Send operation OP (one-way, durable) to the entity NAME with key KEY.",
    )
    p.add_argument("name", metavar="NAME", help="the entity's registered name")
    p.add_argument("key", metavar="KEY", help="the entity key")
    p.add_argument("operation", metavar="OP", help="the operation")
    p.add_argument("--input", type=cli.json_arg, metavar="JSON", help="the operation's input, as JSON")
    p = cli.leaf(
        esub, "get", entity_get, "show an entity's state", "Show the state of entity NAME with key KEY."
    )
    p.add_argument("name", metavar="NAME", help="the entity's registered name")
    p.add_argument("key", metavar="KEY", help="the entity key")
    p = cli.leaf(
        esub,
        "list",
        entity_list,
        "list entities",
        "List entities, most recently modified first; with --name or --key-prefix, in id order, "
        "a page at a time.",
    )
    p.add_argument("--name", metavar="N", help="only entities named N")
    p.add_argument("--key-prefix", metavar="P", help="only keys starting with P")
    p.add_argument("--modified-from", type=cli.iso_arg, metavar="ISO", help="last modified at or after")
    p.add_argument("--modified-to", type=cli.iso_arg, metavar="ISO", help="last modified at or before")
    p.add_argument("--state", action="store_true", help="show each entity's state")
    p.add_argument("--continuation-token", metavar="T", help="the page after the one that printed it")
    p.add_argument("--all", action="store_true", help="every page (--limit is then the page size)")
    p.add_argument(
        "--limit", type=cli.positive_int_arg, default=100, metavar="N", help="at most N (default: 100)"
    )
