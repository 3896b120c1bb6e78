"""A cheaper ``inspect.stack()`` / ``inspect.getouterframes()`` for TVMScript's parser.

Why: every ``@T.prim_func`` / ``@R.function`` / ``@I.ir_module`` decoration calls
``inspect.stack()``, which looks up the source of every frame on the stack; for frames without
a file (``<frozen runpy>``, ``<string>``) that means ``inspect.getmodule``, a scan of all of
``sys.modules``. With torch loaded (thousands of modules) one parse paid about 0.2 s for it: a
third of a dense GoogLeNet's kernel builds, and a minute of MetaSchedule's start (it parses 500
tensor intrinsics). The parser uses the frames, their locals, and the source line of the
caller's caller only, so this stack gives every frame but reads source lines for the first
few alone. Installed by ``install()`` in the parser modules' namespaces, not in ``inspect``.

The same holds for every ``T.macro`` call: ``ScriptMacro._find_parser_def`` walks
``inspect.getouterframes`` (source lines of every frame, through ``findsource``) only to read
each frame's globals. A ResNet-18's kernels make ~300 macro calls at ~35 ms each: 11 of a
19 s compile. The frames come back without source lines there.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import types

_CONTEXT_FRAMES = 4  # the parser reads frames[2].code_context; a margin beyond it


def _frame_infos(frame: types.FrameType | None, lines_for: int) -> list[inspect.FrameInfo]:
    """``frame`` and every frame outside it, source lines for the innermost ``lines_for``."""
    frames = []
    while frame is not None:
        code = frame.f_code
        lineno = frame.f_lineno
        lines = None
        if len(frames) < lines_for:
            line = linecache.getline(code.co_filename, lineno, frame.f_globals)
            lines = [line] if line else None
        frames.append(
            inspect.FrameInfo(
                frame, code.co_filename, lineno, code.co_name, lines, 0 if lines else None
            )
        )
        frame = frame.f_back
    return frames


def fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)`` from the caller up, source lines for the innermost frames."""
    return _frame_infos(sys._getframe(1), _CONTEXT_FRAMES if context > 0 else 0)


def fast_outer_frames(frame: types.FrameType, context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.getouterframes(frame)`` without source lines (its callers read frames only)."""
    return _frame_infos(frame, 0)


class _InspectWithFastStack(types.ModuleType):
    """``inspect`` as a parser module sees it: the same but ``stack`` and ``getouterframes``."""

    def __init__(self) -> None:
        super().__init__("inspect")

    def __getattr__(self, name: str):
        return getattr(inspect, name)

    stack = staticmethod(fast_stack)
    getouterframes = staticmethod(fast_outer_frames)


_PARSER_MODULES = (
    "tvm.tirx.script.parser.entry",
    "tvm.script.parser.ir.entry",
    "tvm.relax.script.parser.entry",
    "tvm.script.parser.core.parser",  # T.macro's _find_parser_def
)


def install() -> None:
    """Give TVMScript's parser entry points the cheaper stack (idempotent)."""
    import importlib

    proxy = _InspectWithFastStack()
    for name in _PARSER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a TVM without that dialect
            continue
        if getattr(module, "inspect", None) is inspect:
            module.inspect = proxy
