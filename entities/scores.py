"""Players and a leaderboard: an entity that signals another entity.

Entities talk to each other with signals: one-way, durable messages that are sent only if the
operation that sends them succeeds (an operation that raises sends nothing), and are applied in
the order each sender sent them. An entity never waits for another one (only orchestrations can
wait for an answer, with ``ctx.call_entity``), so entities cannot deadlock each other.

:class:`Player` keeps one player's results; when a result beats the player's best it signals the
player's :class:`Leaderboard`, which keeps the best scores of all its players.
"""

from __future__ import annotations

from typing import Any

from durable import Entity, EntityId

#: The registered names of :class:`Player` and :class:`Leaderboard`.
PLAYER = "player"
LEADERBOARD = "leaderboard"
#: How many entries a leaderboard keeps.
BOARD_SIZE = 10


class Player(Entity):
    """One player (key: the player's name). State: ``{"games", "total", "best"}``."""

    state = {"games": 0, "total": 0, "best": None}

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        """Record a game: ``{"points": n, "board": leaderboard key}`` (board default ``global``).
        A new personal best is signalled to the leaderboard."""
        points = result["points"]
        if not isinstance(points, int) or isinstance(points, bool):
            raise ValueError(f"points must be an integer, got {points!r}")
        self.state["games"] += 1
        self.state["total"] += points
        if self.state["best"] is None or points > self.state["best"]:
            self.state["best"] = points
            board = leaderboard(str(result.get("board") or "global"))
            self.signal_entity(board, "submit", input={"player": self.entity_id.key, "score": points})
        return dict(self.state)

    def get(self) -> dict[str, Any]:
        """The player's statistics."""
        return dict(self.state)


class Leaderboard(Entity):
    """The best scores of a board's players. State: ``{"top": [[player, score], ...]}``, best
    first, one entry per player, at most :data:`BOARD_SIZE`."""

    state = {"top": []}

    def submit(self, entry: dict[str, Any]) -> list[list[Any]]:
        """A player's new best: ``{"player": name, "score": n}``; returns the new top list."""
        player, score = str(entry["player"]), int(entry["score"])
        best = {name: points for name, points in self.state["top"]}
        if score > best.get(player, score - 1):
            best[player] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:BOARD_SIZE]
        self.state["top"] = [[name, points] for name, points in ranked]
        return list(self.state["top"])

    def top(self) -> list[list[Any]]:
        """The ranking, best first."""
        return list(self.state["top"])


def player(key: str) -> EntityId:
    """The id of player ``key``."""
    return EntityId(PLAYER, key)


def leaderboard(key: str) -> EntityId:
    """The id of leaderboard ``key``."""
    return EntityId(LEADERBOARD, key)
