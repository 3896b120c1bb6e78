"""Checks on input values before each run, for nodes compiled in a form that is right for only
some values of a graph input (``onnx_fixes`` and ``onnx_recurrent`` make them; the compiled
module keeps them in its manifest and ``CompiledModule.run`` applies them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunGuard:
    """A condition on graph inputs checked before each run (``CompiledModule.run``), for a node
    compiled in a form that is right for only some input values: a Dropout whose training_mode
    is an input is compiled as the identity, right unless training with a ratio above 0."""

    node: str
    flag: str  # the bool input that turns training on
    ratio: str  # the ratio input ('' when it is a constant)
    ratio_value: float = 0.5

    def violation(self, feeds: dict[str, np.ndarray]) -> str:
        """Why these feeds cannot be run ('' when they can)."""
        if self.flag not in feeds or not bool(np.asarray(feeds[self.flag]).reshape(-1)[0]):
            return ""
        ratio = self.ratio_value
        if self.ratio and self.ratio in feeds:
            ratio = float(np.asarray(feeds[self.ratio]).reshape(-1)[0])
        if ratio == 0:
            return ""
        return (
            f"node {self.node!r}: Dropout with {self.flag}=True and ratio {ratio:g}: "
            "training-mode dropout (random masks) is not supported; pass False"
        )

    def to_dict(self) -> dict:
        return {"node": self.node, "flag": self.flag, "ratio": self.ratio,
                "ratio_value": self.ratio_value}  # fmt: skip

    @staticmethod
    def from_dict(d: dict) -> RunGuard:
        return RunGuard(d["node"], d["flag"], d["ratio"], float(d["ratio_value"]))


@dataclass(frozen=True)
class FullLengthGuard:
    """A recurrent node's ``sequence_lens`` fed at run time, compiled as every sequence
    running the full ``steps`` (``onnx_recurrent``): a run with a shorter one is refused."""

    node: str
    lens: str  # the graph input
    steps: int

    def violation(self, feeds: dict[str, np.ndarray]) -> str:
        """Why these feeds cannot be run ('' when they can)."""
        if self.lens not in feeds:
            return ""
        values = np.asarray(feeds[self.lens]).reshape(-1)
        if np.all(values == self.steps):
            return ""
        return (
            f"node {self.node!r}: {self.lens}={values.tolist()}: this module runs every "
            f"sequence for all {self.steps} steps; shorter ones are not supported"
        )

    def to_dict(self) -> dict:
        return {"kind": "full_length", "node": self.node, "lens": self.lens, "steps": self.steps}


def guard_from_dict(d: dict) -> RunGuard | FullLengthGuard:
    """A guard back from a module's manifest (one without a kind is a Dropout's RunGuard)."""
    if d.get("kind") == "full_length":
        return FullLengthGuard(d["node"], d["lens"], int(d["steps"]))
    return RunGuard.from_dict(d)
