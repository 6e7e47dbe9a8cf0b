"""The encode path's outputs: the features of the encoder G_z(x) (Dumoulin et al. 2017, section 2; the section 4.3
feature vector) as a float32 ``.npy``, and its index CSV naming the source of every row.

Both are written into hidden temporary files beside their targets (``alitool.atomic``) and land together on
``commit`` (``alitool.atomic.commit_together``: the index first, then the .npy as the commit point, the previous
index restored if that last rename fails); a failed or interrupted run removes them and leaves any previous pair
untouched. ``FeatureFiles`` claims ``--out`` first (``alitool.outputs``: one-line errors for a destination that
cannot be written, a lock against a second writer, stale temporaries of a killed run removed).
"""

from __future__ import annotations

import csv
import errno
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alitool.atomic import commit, commit_together, discard, temp_beside
from alitool.encoding.decoding import Record
from alitool.errors import UserError

if TYPE_CHECKING:
    from alitool.encoding.report import RunReport


def index_path_for(out: str | Path) -> Path:
    """``feats.npy`` -> ``feats.index.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".index.csv")


class NpyRowWriter:
    """Append float32 rows to a ``.npy`` through memory maps over a hidden temporary file next to ``path``;
    ``commit()`` writes the final header and renames it over ``path``; ``abort()`` deletes it.

    Each append maps only the rows it writes and unmaps them at once, so the process never holds more than
    one batch of the file (the kernel writes the pages back). The row count is unknown in advance (skipped
    files, video lengths), so the file grows by doubling, with its blocks reserved up front; NumPy's header
    keeps spare room for the row count, so the final header is rewritten in place."""

    def __init__(self, path: str | Path, dim: int, capacity: int = 4096):
        self.path, self.dim, self.rows = Path(path), int(dim), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = temp_beside(self.path)
        self._file = os.fdopen(fd, "r+b")
        self._offset = self._write_header(0)
        self.capacity = 0
        self._grow(max(1, capacity))

    def _write_header(self, rows: int) -> int:
        self._file.seek(0)
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, self.dim)}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._file.flush()
        return self._file.tell()

    def _grow(self, capacity: int) -> None:
        size = self._offset + capacity * self.dim * 4
        try:  # reserve real blocks: a full disk must fail here as an OSError, not as SIGBUS inside a map
            os.posix_fallocate(self._file.fileno(), 0, size)
        except (AttributeError, OSError) as err:
            if isinstance(err, OSError) and err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"{self.path}: cannot reserve space for the features: {err.strerror}") from None
            self._file.truncate(size)  # a file system without fallocate: sparse, like np.lib.format.open_memmap
        self.capacity = capacity

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise UserError(f"the model returned features of shape {rows.shape}; expected [n, {self.dim}]")
        if not len(rows):
            return
        end = self.rows + len(rows)
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        window = np.memmap(self._file, dtype="<f4", mode="r+", offset=self._offset + self.rows * self.dim * 4,
                           shape=rows.shape)
        window[:] = rows
        window._mmap.close()  # unmap now, not whenever the garbage collector gets to it
        self.rows = end

    def finish(self) -> None:
        """The final size and header, before the file is renamed into place."""
        self._file.truncate(self._offset + self.rows * self.dim * 4)
        if self._write_header(self.rows) != self._offset:  # cannot happen with NumPy's padded header
            raise RuntimeError("the .npy header changed length")

    def commit(self) -> None:
        self.finish()
        commit(self.tmp, self.path, self._file)

    def abort(self) -> None:
        discard(self.tmp, self._file)


# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def index_cell(name: str) -> str:
    """A source name as the index writes it: always valid UTF-8 (bytes of a file name that are not UTF-8, carried
    by Python as surrogate escapes, become %XX: ``caf\\xe9.jpg`` -> ``caf%E9.jpg``), and a name that starts
    with = + - @, a tab or a carriage return gets a leading ' so that no spreadsheet runs it as a formula."""
    if not name.isascii():  # an ASCII name is valid UTF-8 as it is: most names skip the character loop
        name = _valid_utf8(name)
    return "'" + name if name.startswith(_FORMULA_STARTS) else name


def _valid_utf8(name: str) -> str:
    if any("\udc80" <= ch <= "\udcff" for ch in name):
        name = "".join(f"%{ord(ch) - 0xDC00:02X}" if "\udc80" <= ch <= "\udcff" else ch for ch in name)
    return name.encode("utf-8", "replace").decode("utf-8")  # any other lone surrogate


class IndexWriter:
    """The row index next to the features, ``row,source,frame,time_s``, written atomically like the .npy."""

    FIELDS = ("row", "source", "frame", "time_s")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        fd, self.tmp = temp_beside(self.path)
        # surrogateescape: file names that are not valid UTF-8 are written back byte for byte
        self._file = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.FIELDS)
        self.rows = 0

    def append(self, records: list[Record]) -> None:
        """A batch's rows, in one ``writerows`` call."""
        self._csv.writerows((row, index_cell(record.source), "" if record.frame is None else record.frame,
                             _time_cell(record.time_s)) for row, record in enumerate(records, self.rows))
        self.rows += len(records)

    def commit(self) -> None:
        commit(self.tmp, self.path, self._file)

    def abort(self) -> None:
        discard(self.tmp, self._file)


def _time_cell(time_s: float | None) -> str:
    return "" if time_s is None or math.isnan(time_s) else f"{time_s:.6f}"


class FeatureFiles:
    """The features ``.npy`` and its index CSV, written as a pair: ``commit()`` lands both; leaving the ``with``
    block on an exception removes both temporary files, so a failed run never leaves half a result."""

    def __init__(self, out: str | Path, inputs=()):
        from alitool.outputs import claim

        self.out = check_features_path(out)
        self.claim = claim(self.out, inputs=inputs, also=[index_path_for(self.out)])
        self.npy: NpyRowWriter | None = None  # opened at the first batch, when the feature width is known
        try:
            self.index = IndexWriter(index_path_for(self.out))
        except OSError as err:
            self.claim.release()
            raise UserError(f"--out {self.out}: cannot write beside it ({err.strerror or err})") from None

    @property
    def rows(self) -> int:
        return 0 if self.npy is None else self.npy.rows

    def append(self, feats: np.ndarray, records: list[Record]) -> None:
        if self.npy is None:
            self.npy = NpyRowWriter(self.out, feats.shape[1] if feats.ndim == 2 else 0)
        self.npy.append(feats)
        self.index.append(records)

    def commit(self, report: RunReport) -> None:
        """Land the index and the .npy as one step (``commit_together``): both new, or both as they were."""
        from alitool.outputs import check_destination

        report.rows, report.dim = self.npy.rows, self.npy.dim
        self.npy.finish()
        for path in (self.index.path, self.out):  # a folder made under either name during the run
            check_destination(path)
        try:
            commit_together([(self.index.tmp, self.index.path, self.index._file),
                             (self.npy.tmp, self.npy.path, self.npy._file)])
        except OSError as err:
            raise UserError(f"--out {self.out}: cannot write it ({err.strerror or err}); the previous "
                            f"{self.out.name} and {self.index.path.name}, if any, are untouched") from None

    def __enter__(self) -> FeatureFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                if self.npy is not None:
                    self.npy.abort()
                self.index.abort()
        finally:
            self.claim.release()


def check_features_path(out: str | Path) -> Path:
    """``--out`` of ``encode``: a name ending in .npy, with something before the extension."""
    out = Path(out)
    if not out.name.lower().endswith(".npy"):
        raise UserError(f"--out {out}: the features file must end in .npy")
    if out.name.lower() == ".npy":
        raise UserError(f"--out {out}: the features file needs a name before .npy (e.g. "
                        f"{out.with_name('feats.npy')})")
    return out
