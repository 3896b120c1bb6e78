"""Auto-tuning: every kernel of a model searched on this machine or an RPC device, records on disk.

Two kinds of tasks, because the two kinds of kernels are built differently:

- **Kernel tasks** (one per layer and candidate kernel: dense GEMM, CSR, BSR, sparse conv,
  sparse-sparse). Their schedule lives in the builders' keyword knobs (each kernel family's
  ``knob_space``, read through :mod:`.space`), so tuning builds the kernel with a knob setting
  on the layer's real weights, times it (:mod:`.measure`) and keeps the fastest
  (:mod:`.search`, an XGBoost-guided search that always measures the hand schedule first).
  Records: ``RECORDS_DIR/kernel_records.json`` (:mod:`.records`).
- **MetaSchedule tasks** (:mod:`.metaschedule`): the fused TIR functions left after
  legalization that no tvm-sparse kernel covers, tuned by MetaSchedule into its JSON database
  in ``RECORDS_DIR``, which ``compile(tuning_records=RECORDS_DIR)`` applies.

``tvm_sparse.tuner.tune`` (beside ``compiler.py``) extracts both kinds of tasks, steps the
kernel searches round-robin, then tunes the MetaSchedule tasks one by one, and returns a
:class:`~.results.TuneSummary`.
Re-running ``tune`` on the same model finds the records and measures nothing again. With more
trials than before, a task continues where it stopped.

``tune`` ends with an end-to-end check (:mod:`.model_check`): the compiled model timed with and
without the new records, in turns; records that do not make the model faster are not applied
to it. Records are keyed by the machine they were measured on (``tvm_sparse.machine``).

At compile time, :func:`use_records` makes a records directory active and
:func:`tuned_choice` answers, per layer, which candidate won and builds it with its best knobs
(:mod:`.lookup`).
"""

from ..measure_input import layer_input
from .lookup import choose_layer_tuned, tuned_choice, tuned_kernel
from .measure import LocalMeasurer, RPCMeasurer, measure_kernel
from .metaschedule import default_schedule, extract_ms_tasks, in_process_builder, tune_ms_task
from .model_check import (
    MODEL_CHECKS,
    ModelCheck,
    forget_check,
    model_fingerprint,
    read_check,
    write_check,
)
from .records import (
    KERNEL_RECORDS,
    MS_TASKS,
    KernelRecords,
    Records,
    best_knobs,
    foreign_records_message,
    kernel_key,
    load_records,
    open_database,
    records_machine,
    use_records,
)
from .results import TaskResult, TuneSummary
from .search import KernelSearch
from .space import build_candidate, knob_space

__all__ = [
    "KERNEL_RECORDS",
    "MODEL_CHECKS",
    "MS_TASKS",
    "KernelRecords",
    "ModelCheck",
    "KernelSearch",
    "LocalMeasurer",
    "RPCMeasurer",
    "Records",
    "TaskResult",
    "TuneSummary",
    "best_knobs",
    "build_candidate",
    "choose_layer_tuned",
    "default_schedule",
    "extract_ms_tasks",
    "foreign_records_message",
    "forget_check",
    "in_process_builder",
    "kernel_key",
    "knob_space",
    "layer_input",
    "load_records",
    "measure_kernel",
    "model_fingerprint",
    "open_database",
    "read_check",
    "records_machine",
    "tune_ms_task",
    "tuned_choice",
    "tuned_kernel",
    "use_records",
    "write_check",
]
