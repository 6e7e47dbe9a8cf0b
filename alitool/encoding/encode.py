"""The encode path end to end: sources -> model batches -> the encoder G_z(x) (Dumoulin et al. 2017, section 2)
-> a features ``.npy`` and its index CSV. The features are the posterior mean (default), a sample of q(z | x), or
the section 4.3 SVM feature vector, whichever ``kind`` the backend is asked for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from alitool.contract.preprocess import Preprocess
from alitool.encoding.batching import Batch, batches, call_model
from alitool.encoding.decoding import decode_runs
from alitool.encoding.feature_files import FeatureFiles
from alitool.encoding.report import RunReport
from alitool.errors import UserError
from alitool.io.sources import expand_sources


def preprocess_for(backend, max_pixels: int | None = None, jpeg_draft: bool = True) -> Preprocess:
    """The model's own input recipe; refuses models that do not take images (the 2-D toy experiment)."""
    meta = backend.meta
    if not meta.image_size:
        raise UserError(f"model {meta.name!r} takes {meta.channels}-D vectors, not images; nothing to decode")
    if not meta.has_encoder:
        raise UserError(f"model {meta.name!r} has no encoder (a decoder-only export); pass the run folder or "
                        "encoder.onnx")
    if max_pixels is None:
        return Preprocess.from_meta(meta, jpeg_draft=jpeg_draft)
    return Preprocess.from_meta(meta, max_pixels, jpeg_draft)


def model_batches(backend, sources: Iterable[str], report: RunReport, *, batch_size: int = 64, workers: int = 2,
                  stride: int = 1, max_pixels: int | None = None, limit: int = 0,
                  jpeg_draft: bool = True) -> Iterator[Batch]:
    """Fixed-size batches of the inputs named by ``sources``, prepared for ``backend``'s model; skipped inputs
    and damaged videos are reported to ``report`` as they pass."""
    pre = preprocess_for(backend, max_pixels, jpeg_draft)
    stream = decode_runs(expand_sources(sources, stride), pre, workers)
    yield from batches(stream, pre, batch_size, backend.meta.value_range, report.on_skip, report.on_notice, limit)


def encode_to_npy(backend, sources: Iterable[str], out: str | Path, *, kind: str = "mean", batch_size: int = 64,
                  workers: int = 2, stride: int = 1, max_pixels: int | None = None, progress: bool = True,
                  report: RunReport | None = None, jpeg_draft: bool = True) -> RunReport:
    """Encode every input named by ``sources`` with ``backend``; write ``out`` (float32 [N, D] .npy) and its
    index CSV atomically. Bad inputs are skipped with one warning line each and listed in the report."""
    from tqdm import tqdm

    report = report or RunReport()
    with FeatureFiles(out) as files:
        bar = tqdm(unit="img", desc="encode", disable=None if progress else True, file=sys.stderr, smoothing=0.1)
        start = time.perf_counter()
        try:
            for batch in model_batches(backend, sources, report, batch_size=batch_size, workers=workers,
                                       stride=stride, max_pixels=max_pixels, jpeg_draft=jpeg_draft):
                feats = call_model(backend.encode, batch.images, kind=kind)[: batch.count]
                files.append(feats, batch.records)
                bar.update(batch.count)
            if files.rows == 0:
                raise UserError(f"nothing to encode: no usable image or video frame in the sources "
                                f"({len(report.skipped)} skipped); {out} was not written")
            files.commit(report)
        finally:
            bar.close()
    report.seconds = time.perf_counter() - start
    return report
