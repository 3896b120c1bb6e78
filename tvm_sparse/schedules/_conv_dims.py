"""A conv2d's geometry (``ConvAttrs``, what every x86 conv builder takes) and the checked sizes
of a groups=1 NCHW / OIHW conv2d, shared by the sparse conv builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..target import num_cores
from ._epilogue import check_activation
from .kernel import as_weight


@dataclass(frozen=True)
class ConvAttrs:
    """A conv2d's geometry as the builders take it: ``strides`` and ``dilation`` (h, w),
    ``padding`` (top, left, bottom, right), ``groups``."""

    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, attrs: dict) -> ConvAttrs:
        """From a layer's ``conv_attrs`` dict (``LayerSpec.conv_attrs``)."""
        return cls(attrs["strides"], attrs["padding"], attrs["dilation"], attrs["groups"])


# The builders' default: stride 1, no padding, no dilation, one group.
DEFAULT_CONV = ConvAttrs()


class ConvDims(NamedTuple):
    """``x`` (batch, C, H, W), ``kernel`` (O, KH, KW), ``pads`` (top, left, bottom, right),
    ``strides`` and ``dilation`` (h, w), ``out_hw`` (OH, OW), all Python ints."""

    x: tuple[int, int, int, int]
    kernel: tuple[int, int, int]
    pads: tuple[int, int, int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]


def conv_dims(x_shape, w_shape, strides, padding, dilation) -> ConvDims:
    """The conv's sizes; a clear error when the channels disagree or the output is empty."""
    bn, ci, h, wd = (int(s) for s in x_shape)
    o, wci, kh, kw = (int(s) for s in w_shape)
    if wci != ci:
        raise ValueError(f"weight has {wci} input channels, input has {ci}")
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"empty conv output for input {x_shape} and kernel {(kh, kw)}")
    return ConvDims(
        (bn, ci, h, wd), (o, kh, kw), (top, left, bottom, right), (sh, sw), (dh, dw), (oh, ow)
    )


def checked_groups1_conv(
    builder: str, x_shape, weight_oihw, conv: ConvAttrs, activation
) -> tuple[np.ndarray, ConvDims]:
    """``(float32 OIHW weight, ConvDims)`` after the checks every groups=1 sparse conv builder
    makes, in one order, so the same bad call fails with the same message in each."""
    check_activation(activation)
    if conv.groups != 1:
        raise ValueError(f"{builder} supports groups=1 only, got groups={conv.groups}")
    weight = as_weight(weight_oihw, 4)
    return weight, conv_dims(x_shape, weight.shape, conv.strides, conv.padding, conv.dilation)


def samples_in_parallel(batch: int, target: Any, scratch_bytes: int) -> bool:
    """Whether a conv kernel should run whole samples in parallel rather than split one
    sample's work over the cores: when there are at least as many samples as cores
    (``target``'s) and one sample's re-laid input (``scratch_bytes``, one copy a thread) fits
    in ``SAMPLE_SCRATCH_BYTES``. At batch 64 on two cores, splitting the GSC cnn2's ~70 us per
    sample over the cores gained 1.07x, whole samples per core 1.83x. Layers with megabytes of
    planes a sample (ResNet's 56x56 stage) keep the split: their work per sample is large
    enough to share, and one copy of the planes stays in the shared caches."""
    return batch > 1 and batch >= num_cores(target) and scratch_bytes <= SAMPLE_SCRATCH_BYTES


# Scratch a thread may own when samples run in parallel: half a 2 MiB L2.
SAMPLE_SCRATCH_BYTES = 1 << 20
