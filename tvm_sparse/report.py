"""The per-layer sparsity report: what each layer is, how sparse, and what the compiler chose."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .report_html import render_html
from .safe_text import short_name, terminal_text


@dataclass
class LayerReport:
    """One weighted layer of the model."""

    name: str
    op: str  # "linear" or "conv2d"
    input_shape: list[int]
    weight_shape: list[int]
    output_shape: list[int]
    macs_dense: int
    weight_density: float
    weight_nnz: int
    patterns: dict = field(default_factory=dict)
    activation: dict = field(default_factory=dict)  # ActivationInfo.to_dict()
    epilogue: list[str] = field(default_factory=list)  # ["bias", "relu"]
    chosen: str = "dense"
    reason: str = ""
    estimated_ms: dict = field(default_factory=dict)  # candidate -> estimated ms
    measured_ms: dict = field(default_factory=dict)  # candidate -> measured ms
    # formats.weight_map: a coarse density map and the exact top-left mask, for the heatmap;
    # empty in reports written before it existed
    weight_map: dict = field(default_factory=dict)

    @property
    def macs_weight_sparse(self) -> int:
        return int(round(self.macs_dense * self.weight_density))

    @property
    def macs_sparse_sparse(self) -> int | None:
        density = self.activation.get("density")
        if density is None:
            return None
        return int(round(self.macs_dense * self.weight_density * density))

    def activation_text(self) -> str:
        kind = self.activation.get("kind", "dense")
        if kind == "kwta":
            act = self.activation
            text = f"kwta {act['k'] / act['n']:.1%}"
            if "max_pool2d" in act.get("through", ()):
                text += f" pool {act['density']:.0%}"
            return text
        return kind

    def chosen_ms(self) -> float | None:
        """The chosen kernel's time: measured where it was timed, else the cost model's."""
        return self.measured_ms.get(self.chosen, self.estimated_ms.get(self.chosen))

    def cells(self) -> tuple[str, ...]:
        """The row of ``TABLE_HEADER`` for this layer, as plain text; the full layer name (each
        writer shortens and escapes it for its medium)."""
        ss_macs = self.macs_sparse_sparse
        chosen_ms = self.chosen_ms()
        return (
            self.name,
            self.op,
            "x".join(str(d) for d in self.weight_shape),
            f"{self.weight_density:.1%}",
            str(self.patterns.get("summary", "unstructured"))[:22],
            self.activation_text(),
            f"{self.macs_dense:,}",
            f"{self.macs_weight_sparse:,}",
            "-" if ss_macs is None else f"{ss_macs:,}",
            self.chosen,
            "-" if chosen_ms is None else f"{chosen_ms:.3f}",
        )


# the columns of the report table (text and HTML)
TABLE_HEADER = (
    "layer",
    "op",
    "weight",
    "density",
    "pattern",
    "input act.",
    "MACs dense",
    "MACs w-sparse",
    "MACs sparse-sparse",
    "chosen",
    "est/meas ms",
)


@dataclass
class Report:
    """Sparsity report of a whole model; prints as a table and round-trips through JSON."""

    model: str
    target: str = ""
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for layer, d in zip(self.layers, out["layers"]):
            d["macs_weight_sparse"] = layer.macs_weight_sparse
            d["macs_sparse_sparse"] = layer.macs_sparse_sparse
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @staticmethod
    def from_dict(d: dict) -> Report:
        keys = LayerReport.__dataclass_fields__
        layers = [LayerReport(**{k: v for k, v in ld.items() if k in keys}) for ld in d["layers"]]
        return Report(d["model"], d.get("target", ""), layers, list(d.get("notes", [])))

    @staticmethod
    def from_json(text: str) -> Report:
        return Report.from_dict(json.loads(text))

    @property
    def total_macs_dense(self) -> int:
        return sum(layer.macs_dense for layer in self.layers)

    def table(self) -> str:
        """A fixed-width table, one row per layer (what the CLI and the demo print)."""
        header = TABLE_HEADER
        rows = [header]
        for layer in self.layers:
            name, *rest = layer.cells()
            rows.append((short_name(terminal_text(name, None)), *rest))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        # model-controlled text (file and layer names, notes quoting them) reaches a terminal:
        # no escape sequence or control character gets through (safe_text)
        title = f"tvm-sparse report: {terminal_text(self.model)}" + (
            f" (target {self.target})" if self.target else ""
        )
        out = [title, *lines]
        out.extend(f"note: {terminal_text(n, None)}" for n in self.notes)
        return "\n".join(out)

    def to_html(self, heatmap_layer: str | None = None) -> str:
        """One self-contained HTML page: the plots (inline SVG), this table and the notes.
        ``heatmap_layer`` names the layer of the large sparsity heatmap (default: the sparse
        layer with the most MACs). See ``report_html``."""
        table = [TABLE_HEADER, *(layer.cells() for layer in self.layers)]
        return render_html(self.to_dict(), table, heatmap_layer)

    def __str__(self) -> str:
        return self.table()
