"""Typed shims over the ``ocpp`` library's untyped route decorators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from ocpp.routing import after as _after
from ocpp.routing import on as _on

F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """``ocpp.routing.on``: the handler answering CALL ``action``."""
    return cast(Callable[[F], F], _on(action))


def after(action: str) -> Callable[[F], F]:
    """``ocpp.routing.after``: runs after the reply to ``action`` was sent (must not block)."""
    return cast(Callable[[F], F], _after(action))
