"""The metrics table: one long-format row per (evaluation step, split), one pyarrow schema.

Columns (documented once, here and in the README):

    experiment  string   experiment name
    seed        int32    seed of the chain (initialisation and data order)
    round       int32    pruning round; 0 is the dense network
    branch      string   'main' for the experiment's own chain, else the control's name
    density     float64  fraction of prunable weights kept
    step        int64    iterations trained in this round/branch at this evaluation
    split       string   train (mean over the iterations since the last evaluation) | val | test
    loss        float64  mean cross-entropy
    accuracy    float64  fraction correct
    lr          float64  learning rate of the last iteration before this evaluation
    status      string   ok | diverged (the train row where the loss blew up)
    top5        float64  val/test rows of streamed datasets with > 10 classes: fraction whose
                         label is among the 5 highest outputs (lotto.core.train.evaluate_streamed);
                         null elsewhere. Files without it (all older results, and every file
                         whose rows have none) omit the column; `read` adds it as null.

Wall-clock times are kept out of this table so that two runs of the same seed write
byte-identical files; they live in each job's log and benchmark file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lotto.core import io

if TYPE_CHECKING:  # pandas costs ~0.4 s of CPU to import; a training job only writes rows
    import pandas as pd

SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("seed", pa.int32()),
        ("round", pa.int32()),
        ("branch", pa.string()),
        ("density", pa.float64()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("loss", pa.float64()),
        ("accuracy", pa.float64()),
        ("lr", pa.float64()),
        ("status", pa.string()),
    ]
)
# The optional last column: written only by files that have a value in it, so the files of
# datasets without top-5 stay byte-identical to those written before it existed.
TOP5 = pa.field("top5", pa.float64())
FULL_SCHEMA = SCHEMA.append(TOP5)


def write(path: str | Path, rows: Iterable[dict[str, Any]], **constants: Any) -> None:
    """Write rows (plus columns constant for the whole file) atomically as parquet."""
    records = [{**constants, **row} for row in rows]
    schema = FULL_SCHEMA if any(r.get("top5") is not None for r in records) else SCHEMA
    columns = [_column([r.get(f.name) for r in records], f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    with io.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


_NUMPY_TYPES = {pa.int32(): (np.int32, (int,)), pa.int64(): (np.int64, (int,)),
                pa.float64(): (np.float64, (int, float))}


def _column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """`pa.array(values, kind)`, built from numpy buffers when every value is a plain str,
    int or float: pa.array imports pandas (~0.4 s of CPU, in every training job) to look
    for pandas objects. Anything else (None, numpy scalars, wrong types) goes to pa.array."""
    if kind == pa.string() and all(type(v) is str for v in values):
        data = [v.encode() for v in values]
        offsets = np.zeros(len(data) + 1, dtype=np.int32)
        np.cumsum([len(b) for b in data], out=offsets[1:])
        return pa.Array.from_buffers(
            kind, len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
        )
    dtype, plain = _NUMPY_TYPES.get(kind, (None, ()))
    if dtype is not None and all(type(v) in plain for v in values):
        return pa.Array.from_buffers(
            kind, len(values), [None, pa.py_buffer(np.asarray(values, dtype=dtype))]
        )
    return pa.array(values, kind)


def read(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate metrics files, refusing any that is unreadable or of another schema."""
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as err:
            raise io.CorruptFileError(
                f"{path}: not a readable metrics file ({err}); delete it and rerun the workflow"
            ) from err
        if table.schema.equals(SCHEMA):
            table = table.append_column(TOP5, pa.nulls(len(table), TOP5.type))
        if not table.schema.equals(FULL_SCHEMA):
            raise io.CorruptFileError(f"{path}: columns differ from the metrics schema; delete it and rerun")
        tables.append(table)
    if not tables:
        return FULL_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def write_frame(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a frame as `read` returns it (the top5 column left out when it is all null)."""
    schema = FULL_SCHEMA if "top5" in frame and frame["top5"].notna().any() else SCHEMA
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    with io.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


RUN_KEYS = ["experiment", "seed", "round", "branch"]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training: early-stop step (minimum validation loss, earliest on ties),
    test accuracy there, final test accuracy (and top-5, NaN without), final train loss/accuracy,
    density, status.
    Without a validation set (dataset.val_size: 0) there is no early stop: its step and
    accuracy are NaN, never silently the last step."""
    import pandas as pd

    out = []
    for key, run in frame.groupby(RUN_KEYS, sort=True):
        val = run[run.split == "val"].sort_values("step")
        test = run[run.split == "test"].set_index("step")
        train = run[run.split == "train"].sort_values("step")
        finite_val = val[val.loss.notna()]
        stop = int(finite_val.loc[finite_val.loss.idxmin(), "step"]) if len(finite_val) else None
        last = int(test.index.max())
        out.append(
            {
                **dict(zip(RUN_KEYS, key, strict=True)),
                "density": float(run.density.iloc[0]),
                "early_stop_step": float("nan") if stop is None else stop,
                "early_stop_accuracy": float("nan") if stop is None else float(test.loc[stop, "accuracy"]),
                "final_accuracy": float(test.loc[last, "accuracy"]),
                "final_step": last,
                "final_top5": float(test.loc[last, "top5"]) if "top5" in test else float("nan"),
                "train_loss": float(train.loss.iloc[-1]) if len(train) else float("nan"),
                "train_accuracy": float(train.accuracy.iloc[-1]) if len(train) else float("nan"),
                "status": "diverged" if (run.status == "diverged").any() else "ok",
            }
        )
    return pd.DataFrame(out)
