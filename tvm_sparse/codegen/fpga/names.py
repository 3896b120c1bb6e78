"""Model names -> C identifiers and file names.

ONNX node names are free text ("conv.1", "2-block/relu", "my layer", "int"). Every name that
reaches the generated code goes through ``NameTable.add``: characters outside ``[A-Za-z0-9_]``
become ``_``, a leading digit gets an ``l_`` prefix, C/C++ keywords and the identifiers the
generated code itself uses get a ``_`` suffix, reserved forms (``__x``, ``_X``) lose their
leading underscores, and clashes get ``_2``, ``_3``... The result is also a safe file name.
"""

from __future__ import annotations

import re

MAX_LENGTH = 48

C_KEYWORDS = frozenset(
    """
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
    char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
    co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
    extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq
    nullptr operator or or_eq private protected public register reinterpret_cast requires return
    short signed sizeof static static_assert static_cast struct switch template this thread_local
    throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t while
    xor xor_eq restrict _Bool _Complex _Imaginary main
    """.split()
)
# Names the generated files define or include: a layer must not shadow them.
GENERATED = frozenset(
    "nnet hls std in out n_samples input output parameters defines weights firmware tb_data "
    "myproject ap_fixed ap_int ap_uint".split()
)


def sanitize(name: str) -> str:
    """One name as a C identifier (not yet unique)."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
    text = re.sub(r"_+", "_", text).strip("_")
    if not text:
        text = "layer"
    if text[0].isdigit():
        text = "l_" + text
    text = text[:MAX_LENGTH].rstrip("_") or "layer"
    if text in C_KEYWORDS or text in GENERATED:
        text += "_"
    return text


class NameTable:
    """Unique sanitized names, remembering which model name each came from."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self._used: set[str] = set(reserved or ())
        self.source: dict[str, str] = {}

    def add(self, name: str) -> str:
        base = sanitize(name)
        candidate, i = base, 2
        while candidate in self._used:
            candidate, i = f"{base}_{i}", i + 1
        self._used.add(candidate)
        self.source[candidate] = str(name)
        return candidate
