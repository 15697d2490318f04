"""`fedgrid partition`: turn a pooled dataset into one Parquet file per client.

This is how a simulation becomes a deployment: each site is handed only its clients' files, and the
job switches to ``dataset: parquet`` with ``path: .../client-{client:03d}.parquet``. Files carry the
input shape and class count in their schema metadata, so the driver can build the model without
reading a training row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedgrid.apps.datasets import Arrays, client_arrays, load_test
from fedgrid.apps.files import atomic_write


def arrays_table(a: Arrays) -> pa.Table:
    width = int(math.prod(a.shape))
    flat = pa.array(np.ascontiguousarray(a.x, dtype=np.float32).reshape(-1))
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, width), "label": pa.array(a.y)})
    meta = {b"fedgrid.shape": json.dumps(list(a.shape)).encode(),
            b"fedgrid.num_classes": str(a.num_classes).encode()}
    return table.replace_schema_metadata(meta)


def write_shards(job: Any, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = job.data.model_dump()
    paths = []
    for c in range(job.data.clients):
        path = out / f"client-{c:03d}.parquet"
        table = arrays_table(client_arrays(data, c, job.data.clients, job.seed))
        atomic_write(path, lambda tmp, t=table: pq.write_table(t, tmp))
        paths.append(path)
    test = load_test(data, job.seed)
    if test is not None:
        path = out / "test.parquet"
        table = arrays_table(test)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        paths.append(path)
    return paths
