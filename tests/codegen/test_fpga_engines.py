"""The engine table: one config template per engine of nnet_sparse.h, holding exactly the fields
that engine reads (a missing one would not compile, an extra one would be noise)."""

from __future__ import annotations

import re

import pytest

from tvm_sparse.codegen.fpga.engines import ENGINES
from tvm_sparse.codegen.fpga.writer import TEMPLATES, template_text

NNET = (TEMPLATES / "firmware" / "nnet_sparse.h").read_text()
_FUNCTION = re.compile(r"^template <[^>]*>\s*(?:inline )?[\w:<> ]*?\b(\w+)\(", re.M)
_STRUCT = re.compile(r"^template <[^>]*> struct (\w+) \{\n(.*?)^\};", re.M | re.S)
_METHOD = re.compile(r"^    (?![/\s])[^\n]*?\b(\w+)\(", re.M)


def _functions() -> dict[str, str]:
    """{function name: the bodies of its overloads} of nnet_sparse.h."""
    out: dict[str, str] = {}
    for m in _FUNCTION.finditer(NNET):
        end = NNET.index("\n}\n", m.start())
        out[m.group(1)] = out.get(m.group(1), "") + NNET[m.start() : end]
    return out


def _struct_parts() -> dict[str, dict[str, str]]:
    """{helper struct: {"": its data members, method name: the method}} of nnet_sparse.h (the
    weight stores the engines hand to their shared loop nests)."""
    out: dict[str, dict[str, str]] = {}
    for m in _STRUCT.finditer(NNET):
        body = m.group(2)
        starts = [x.start() for x in _METHOD.finditer(body)] + [len(body)]
        parts = {"": body[: starts[0]]}
        for start, end in zip(starts, starts[1:]):
            parts[_METHOD.match(body, start).group(1)] = body[start:end]
        out[m.group(1)] = parts
    return out


def _fields_read(function: str, bodies: dict[str, str]) -> set[str]:
    """``CONFIG_T::`` names read by ``function``, the helpers it passes its config to and the
    methods it calls of the helper structs it builds (only those: a class template's unused
    methods are never instantiated)."""
    structs = _struct_parts()
    texts = {bodies[function]}
    while True:
        code = "\n".join(texts)
        helpers = set(re.findall(r"(\w+)<CONFIG_T>", code))
        reached = set(texts) | {bodies[h] for h in helpers if h in bodies}
        for struct in helpers & set(structs):
            for name, text in structs[struct].items():
                if not name or re.search(rf"\b{name}[<(]", code):
                    reached.add(text)
        if reached == texts:
            break
        texts = reached
    return set(re.findall(r"CONFIG_T::(\w+)", "\n".join(texts)))


def _fields_declared(template: str) -> set[str]:
    text = template_text(template)
    typedefs = set(re.findall(r"typedef \S+ (\w+);", text))
    constants = {
        name
        for line in re.findall(r"static const \w+ ([^;]+);", text)
        for name in re.findall(r"(\w+) = ", line)
    }
    functions = set(re.findall(r"static \w+ (\w+)\(", text))
    return typedefs | constants | functions


@pytest.mark.parametrize("key", sorted(ENGINES), ids="-".join)
def test_config_template_declares_what_its_engine_reads(key):
    engine = ENGINES[key]
    bodies = _functions()
    assert engine.function in bodies, f"nnet_sparse.h has no engine {engine.function}"
    assert _fields_declared(engine.config_template) == _fields_read(engine.function, bodies)


def test_every_engine_function_has_an_entry():
    """The engines of nnet_sparse.h (its functions with a config) are exactly the table's."""
    bodies = _functions()
    helpers = {"finish", "read_padded", "conv2d_pixels", "linear_outputs"}
    with_config = {
        name for name, body in bodies.items() if "class CONFIG_T" in body and name not in helpers
    }
    assert with_config == {engine.function for engine in ENGINES.values()}
    templates = {p.name for p in (TEMPLATES / "engines").iterdir()}
    assert templates == {f"{engine.function}.h" for engine in ENGINES.values()}
