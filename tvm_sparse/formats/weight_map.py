"""A weight's sparsity pattern, small enough to keep in the report: what the HTML heatmap draws.

The report keeps no weights (a ResNet-50's are 100 MB); this keeps two pictures of one in under
2 KB of JSON, so that the report of a ResNet-50 (54 layers) grows from 86 to about 185 KB:

- a coarse density map of the whole ``[N, K]`` matrix (conv weights flattened to
  ``[O, C*KH*KW]``): at most ``GRID x GRID`` cells of ``cell`` rows x cols elements (the last
  row and column of cells may be cut short; their density is over the elements they hold), each
  density quantized to a byte (``quantize_density``), stored as hex, row by row;
- the exact non-zero mask of the top-left ``CORNER_ROWS x CORNER_COLS`` elements, one bit each,
  stored as hex: N:M groups and blocks are visible element by element there and nowhere else.

Hex strings, not lists, because the report travels as JSON (module attribute, manifest).
"""

from __future__ import annotations

import numpy as np

GRID = 24  # 32 x 32 would be 2 KB of hex per layer for the map alone
CORNER_ROWS = 32
CORNER_COLS = 64


def quantize_density(density: np.ndarray) -> np.ndarray:
    """Densities in [0, 1] as bytes 0..255, where 0 means exactly empty and 255 exactly full:
    a cell with one non-zero in a thousand must not read as empty, nor a nearly full one as
    full (that is the difference a sparse kernel cares about)."""
    density = np.asarray(density, dtype=np.float64)
    q = np.rint(density * 255.0)
    q[(density > 0) & (q == 0)] = 1
    q[(density < 1) & (q == 255)] = 254
    return q.astype(np.uint8)


def cell_densities(mask: np.ndarray, cell_rows: int, cell_cols: int) -> np.ndarray:
    """Fraction of non-zeros in each ``cell_rows x cell_cols`` cell of the boolean ``mask``
    (edge cells over the elements they hold)."""
    rows, cols = mask.shape
    row_starts = np.arange(0, rows, cell_rows)
    col_starts = np.arange(0, cols, cell_cols)
    counts = np.add.reduceat(mask.astype(np.int64), row_starts, axis=0)
    counts = np.add.reduceat(counts, col_starts, axis=1)
    row_sizes = np.minimum(cell_rows, rows - row_starts)
    col_sizes = np.minimum(cell_cols, cols - col_starts)
    return counts / np.outer(row_sizes, col_sizes)


def _cell_size(length: int) -> int:
    """Elements per cell along one side: at most ``GRID`` cells, and a multiple of 4 when over
    2, so that cells hold whole 4-wide N:M groups and 4 x 4 blocks (a cell cutting through them
    draws stripes that are not in the weight)."""
    size = max(1, -(-length // GRID))
    return size if size <= 2 else 4 * -(-size // 4)


def weight_map(w2d: np.ndarray) -> dict:
    """The report's ``weight_map`` of a 2-D weight (see the module docstring)."""
    w2d = np.asarray(w2d)
    if w2d.ndim != 2:
        raise ValueError(f"weight_map needs a 2-D weight, got shape {list(w2d.shape)}")
    rows, cols = (int(d) for d in w2d.shape)
    mask = w2d != 0
    cell = [_cell_size(rows), _cell_size(cols)]
    if rows and cols:
        density = quantize_density(cell_densities(mask, *cell))
    else:
        density = np.zeros((0, 0), np.uint8)
    corner = mask[:CORNER_ROWS, :CORNER_COLS]
    return {
        "shape": [rows, cols],
        "cell": cell,
        "grid": [int(d) for d in density.shape],
        "density_hex": density.tobytes().hex(),
        "corner": [int(d) for d in corner.shape],
        "mask_hex": np.packbits(corner, axis=None).tobytes().hex(),
    }


def coarse_map(wmap: dict) -> np.ndarray:
    """The quantized density grid (uint8, ``wmap["grid"]`` shaped) of a ``weight_map``."""
    grid_rows, grid_cols = wmap["grid"]
    data = np.frombuffer(bytes.fromhex(wmap["density_hex"]), dtype=np.uint8)
    return data.reshape(grid_rows, grid_cols)


def corner_mask(wmap: dict) -> np.ndarray:
    """The top-left non-zero mask (bool, ``wmap["corner"]`` shaped) of a ``weight_map``."""
    rows, cols = wmap["corner"]
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(wmap["mask_hex"]), dtype=np.uint8))
    return bits[: rows * cols].reshape(rows, cols).astype(bool)
