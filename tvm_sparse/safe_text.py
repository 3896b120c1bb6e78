"""Text a model controls (node, graph, tensor names, doc strings, its file name), made safe for
the place it is written to. One function per context, so no caller has to know the rules:

- ``comment_text``: inside a generated C/C++ ``//`` or ``/* */`` comment, a Tcl or Makefile
  comment or string. Printable ASCII from a short whitelist (no newline, ``*/``, ``\\``, ``#``,
  quotes, ``$``, brackets or braces), capped in length. A node named
  ``"fc\\nint __attribute__((constructor)) pwn(){...}"`` otherwise ends a ``//`` comment and
  becomes code that the C simulation compiles and runs.
- ``terminal_text``: anything printed to a terminal (the report table, progress lines, error
  messages). ANSI escape sequences and control characters removed, newlines shown as ``\\n``,
  so a model cannot recolour, move the cursor or forge lines in the user's terminal.
- ``html_text``: element content and attribute values of the HTML report (SVG ``<title>``
  tooltips included): ``& < > " '`` as entities, after ``terminal_text``'s clean-up (no control
  or bidi format character), so a layer named ``<script>...`` is text, not markup.
- ``short_name``: a layer name cut to a table column or an axis label (not a safety rule: its
  result still goes through the function of its context).
- C identifiers and file names: ``codegen.fpga.names.NameTable`` (sanitized, unique).
- JSON: ``json.dumps`` (escapes everything itself).
"""

from __future__ import annotations

import html
import re
import unicodedata

COMMENT_LIMIT = 96
TERMINAL_LIMIT = 400

# the characters a comment may keep: safe in C, C++, Tcl and Makefile comments and strings
_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9 ._\-/:()+,=<>@!?%&~^|]")
# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST) and two-character escapes
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def comment_text(text: object, limit: int = COMMENT_LIMIT) -> str:
    """``text`` as one line of whitelisted printable ASCII for a generated comment or string."""
    flat = re.sub(r"\s+", " ", str(text))
    safe = _COMMENT_SAFE.sub("_", flat).strip()
    return _cap(safe, limit) or "_"


def terminal_text(text: object, limit: int | None = TERMINAL_LIMIT) -> str:
    """``text`` without escape sequences or control characters, on one line, for a terminal."""
    plain = _ANSI.sub("", str(text))
    out = []
    for ch in plain:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch)[0] == "C":  # Cc control, Cf format (bidi), Cs, Co, Cn
            out.append("?")
        else:
            out.append(ch)
    joined = "".join(out)
    return joined if limit is None else _cap(joined, limit)


def html_text(text: object, limit: int | None = None) -> str:
    """``text`` for HTML element content or a quoted attribute value (see the module docstring)."""
    return html.escape(terminal_text(text, limit), quote=True)


def short_name(name: str, width: int = 36) -> str:
    """Exporter names are paths (``/encoder/layer.0/attention/self/query/MatMul``): drop the op
    suffix and keep the end, where the layer is named."""
    for suffix in ("/MatMul", "/Gemm", "/Conv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name if len(name) <= width else "..." + name[-(width - 3) :]
