"""Reading one ONNX node: an attribute's value, an optional input or output by position.

Shared by the graph rewrites (``onnx_fixes``, ``onnx_recurrent``), which each need the same
three lookups with ONNX's conventions: a missing optional input is an empty name, string
attributes come back as ``str``, lists of them as lists of ``str``."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` (bytes decoded to str), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, list):
                return [v.decode() if isinstance(v, bytes) else v for v in value]
            return value
    return default


def node_input(node: onnx.NodeProto, i: int) -> str:
    """Input ``i``'s name, '' where the node has none (an optional input left out)."""
    return node.input[i] if len(node.input) > i else ""


def node_output(node: onnx.NodeProto, i: int) -> str:
    """Output ``i``'s name, '' where the node has none (an optional output not wanted)."""
    return node.output[i] if len(node.output) > i else ""
