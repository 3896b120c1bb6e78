"""The one way a setting is scoped to a ``with`` block: a ContextVar set on entry and restored
on exit (an error included). Compile-wide settings (where timed weights live, the active tuning
records, the zoo's exporter...) are ContextVars, so nested and concurrent compiles each see
their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def bound(var: ContextVar[T], value: T) -> Iterator[T]:
    """Within the block, ``var`` holds ``value`` (also the block's ``as`` target)."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)
