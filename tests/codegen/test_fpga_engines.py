"""The engine table: one config template per engine of nnet_sparse.h, holding exactly the fields
that engine reads (a missing one would not compile, an extra one would be noise)."""

from __future__ import annotations

import re

import pytest

from tvm_sparse.codegen.fpga.engines import ENGINES
from tvm_sparse.codegen.fpga.writer import TEMPLATES, template_text

NNET = (TEMPLATES / "firmware" / "nnet_sparse.h").read_text()
_FUNCTION = re.compile(r"^template <[^>]*>\s*(?:inline )?[\w:<> ]*?\b(\w+)\(", re.M)


def _functions() -> dict[str, str]:
    """{function name: the bodies of its overloads} of nnet_sparse.h."""
    out: dict[str, str] = {}
    for m in _FUNCTION.finditer(NNET):
        end = NNET.index("\n}\n", m.start())
        out[m.group(1)] = out.get(m.group(1), "") + NNET[m.start() : end]
    return out


def _fields_read(function: str, bodies: dict[str, str]) -> set[str]:
    """``CONFIG_T::`` names read by ``function`` and the helpers it passes its config to."""
    body = bodies[function]
    fields = set(re.findall(r"CONFIG_T::(\w+)", body))
    for helper in set(re.findall(r"(\w+)<CONFIG_T>", body)) - {function}:
        fields |= _fields_read(helper, bodies)
    return fields


def _fields_declared(template: str) -> set[str]:
    text = template_text(template)
    typedefs = set(re.findall(r"typedef \S+ (\w+);", text))
    constants = {
        name
        for line in re.findall(r"static const \w+ ([^;]+);", text)
        for name in re.findall(r"(\w+) = ", line)
    }
    return typedefs | constants


@pytest.mark.parametrize("key", sorted(ENGINES), ids="-".join)
def test_config_template_declares_what_its_engine_reads(key):
    engine = ENGINES[key]
    bodies = _functions()
    assert engine.function in bodies, f"nnet_sparse.h has no engine {engine.function}"
    assert _fields_declared(engine.config_template) == _fields_read(engine.function, bodies)


def test_every_engine_function_has_an_entry():
    """The engines of nnet_sparse.h (its functions with a config) are exactly the table's."""
    bodies = _functions()
    helpers = {"finish", "pad_input"}
    with_config = {
        name for name, body in bodies.items() if "class CONFIG_T" in body and name not in helpers
    }
    assert with_config == {engine.function for engine in ENGINES.values()}
    templates = {p.name for p in (TEMPLATES / "engines").iterdir()}
    assert templates == {f"{engine.function}.h" for engine in ENGINES.values()}
