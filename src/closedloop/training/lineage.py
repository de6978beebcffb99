"""What a training run records to be reproduced and compared: the content hash of its
training set (``table_hash``), the environment (Python, platform, package versions) and the
code (the project's git commit and whether its tree is dirty)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_PACKAGES = ("closedloop", "numpy", "pyarrow", "duckdb", "scikit-learn", "lightgbm",
             "xgboost", "scipy")
_HASH_BLOCK = 1 << 16                # values per block when hashing a column


def table_hash(table: pa.Table, threads: int = 2) -> str:
    """The content hash of a table's values: SHA-256 over, per column, its name, type and
    length and the SHA-256 of its content — which rows are null and the values (nulls as
    zero, strings as their UTF-8 bytes and lengths), not the Arrow buffers, whose chunking and
    bytes under nulls are not part of the content. Columns are hashed on ``threads`` threads
    (hashlib releases the GIL); the result does not depend on it."""
    columns = list(zip(table.column_names, table.columns, strict=True))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        digests = list(pool.map(_column_digest, (c for _, c in columns)))
    top = hashlib.sha256()
    for (name, column), digest in zip(columns, digests, strict=True):
        top.update(f"{name}\x1f{column.type}\x1f{len(column)}\x1e".encode())
        top.update(digest)
    return top.hexdigest()


def _column_digest(column: pa.ChunkedArray) -> bytes:
    """SHA-256 of one column's content (see ``table_hash``)."""
    digest = hashlib.sha256()
    nulls = pc.is_null(column).to_numpy(zero_copy_only=False)
    digest.update(np.packbits(nulls).tobytes())
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_duration(kind):
        column = pc.cast(column, pa.int64())
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        # The values as one byte stream, chunks in order, nulls as zero: zeroed a block at a
        # time, so no copy of the whole column is made.
        at = 0
        for chunk in column.chunks:
            if pa.types.is_boolean(kind):           # bits: as one byte each
                chunk = pc.fill_null(chunk, False)
            values = (chunk.to_numpy(zero_copy_only=False) if not chunk.null_count
                      else np.frombuffer(chunk.buffers()[1], dtype=kind.to_pandas_dtype(),
                                         count=chunk.offset + len(chunk))[chunk.offset:])
            for a in range(0, values.size, _HASH_BLOCK):
                block = values[a:a + _HASH_BLOCK]
                hole = nulls[at + a:at + a + block.size]
                if hole.any():
                    block = np.where(hole, np.zeros(1, block.dtype), block)
                digest.update(np.ascontiguousarray(block).data.cast("B"))
            at += values.size
    else:
        text = pc.fill_null(pc.cast(column, pa.large_string()), "")
        combined = text.combine_chunks()
        offsets, data = combined.buffers()[1], combined.buffers()[2]
        start = combined.offset
        offs = np.frombuffer(offsets, dtype=np.int64)[start:start + len(combined) + 1]
        digest.update((offs - offs[0]).tobytes())
        if data is not None:
            digest.update(memoryview(data)[offs[0]:offs[-1]])
    return digest.digest()


def environment() -> dict[str, Any]:
    """Python, the platform and the versions of the packages a run depends on."""
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": packages}


def code_version(root: Path) -> dict[str, Any]:
    """The git commit of the project folder and whether its tree is dirty (when it is a git
    checkout), and the hash of its definitions module."""
    out: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                    capture_output=True, text=True, timeout=10, check=False)
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


