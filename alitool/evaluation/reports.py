"""The two evaluations of section 4.3 as library calls: ``svm_report`` (the L2-SVM protocol on a model's features
and on the raw-pixel and PCA baselines, table 1's first row) and ``classify_report`` (a K+1 ALI discriminator
used as a classifier, table 1's semi-supervised row). Each returns a JSON-ready dict; the CLI prints and saves it.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alitool import __version__
from alitool.atomic import atomic_write_bytes
from alitool.errors import UserError
from alitool.evaluation.features import (
    PcaFeatures,
    check_shapes,
    dataset_config,
    load_pool_and_test,
    model_features,
    official_model_features,
    raw_pixel_features,
)
from alitool.evaluation.svm import (
    DEFAULT_C_GRID,
    OFFICIAL_C_GRID,
    evaluate_features,
    evaluate_features_official,
    format_table,
    make_splits,
)

FEATURE_NAMES = {"paper": "ALI (paper features)", "mean": "ALI (posterior mean)"}
OFFICIAL_FEATURE_NAME = "ALI (official script features)"
PROTOCOLS = {"alitool": ("alitool",), "official": ("official",), "both": ("alitool", "official")}
# One line per protocol under the table, so a printed table says what each row's numbers mean.
PROTOCOL_NOTES = {
    "alitool": "alitool: features standardised per labelled set, C chosen per repeat on validation, sample std",
    "official": "official: the authors' script's rule: raw features, C chosen once (50 values exp(-20..20)) on one "
                "extra labelled set, then fixed; population std",
}


def svm_report(model: Path, backend, dataset: str | None = None, data_dir: str = "", labels: int = 1000,
               repeats: int = 100, val_size: int = 10000, features: str = "paper", baselines: bool = True,
               seed: int = 0, c_grid: tuple[float, ...] = DEFAULT_C_GRID, protocol: str = "alitool",
               log: Callable[[str], None] = lambda msg: None) -> dict:
    """Run the L2-SVM protocol for ``backend``'s features (and the baselines) under one set of splits.

    ``protocol``: "alitool" (``evaluate_features``, ``features`` picks the model's vector), "official" (the
    authors' script's rule and feature vector, ``evaluate_features_official``) or "both", every feature set under
    each, on the same validation split and labelled sets."""
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    protocols = PROTOCOLS[protocol]
    cfg = dataset_config(dataset, backend.meta.config)
    pool, test = load_pool_and_test(cfg, data_dir)
    check_shapes(pool.x, backend.meta.input_shape, str(model), cfg.data.name)
    splits = make_splits(pool.y, labels, repeats, val_size, seed, selection_set="official" in protocols)
    needed = splits.needed()
    log(f"{cfg.data.name}: pool {pool.split} ({len(pool):,}), validation {val_size:,}, {repeats} labelled sets of "
        f"{labels}; features for {len(needed):,} pool + {len(test):,} test images")
    # (row name, feature function, the protocols that use it): the baselines' features are shared by both.
    sources: list[tuple[str, Callable[[np.ndarray], np.ndarray], tuple[str, ...]]] = []
    if "alitool" in protocols:
        sources.append((FEATURE_NAMES[features], lambda images: model_features(backend, images, features),
                        ("alitool",)))
    if "official" in protocols:
        sources.append((OFFICIAL_FEATURE_NAME, lambda images: official_model_features(backend, images),
                        ("official",)))
    if baselines:
        pca = PcaFeatures(backend.meta.latent_dim, pool.x, seed)
        sources += [("raw pixels", raw_pixel_features, protocols), (f"PCA ({pca.n} components)", pca, protocols)]
    results = []
    for name, compute, used_by in sources:
        started = time.perf_counter()
        pool_f, test_f = compute(pool.x[needed]), compute(test.x)
        log(f"{name}: {pool_f.shape[1]}-d features in {time.perf_counter() - started:.1f} s")
        for rule in used_by:
            if rule == "official":
                results.append(evaluate_features_official(name, pool_f, pool.y, test_f, test.y, splits,
                                                          progress=log))
            else:
                results.append(evaluate_features(name, pool_f, pool.y, test_f, test.y, splits, c_grid,
                                                 progress=log))
        del pool_f, test_f
    title = (f"L2-SVM (squared hinge) on {cfg.data.name}: {labels} labels ({labels // len(np.unique(pool.y))} per "
             f"class), C on {val_size:,} validation examples, test error over {repeats} repeats (mean +- std)")
    table = "\n".join([format_table(results, title), *(PROTOCOL_NOTES[p] for p in protocols)])
    return {
        "evaluation": "l2-svm", "protocol": protocol, "title": title, "table": table,
        "model": str(model), "backend": getattr(backend, "name", type(backend).__name__),
        "features": features if "alitool" in protocols else "official",
        "dataset": cfg.data.name, "pool_split": pool.split, "pool_size": len(pool), "test_size": len(test),
        "labels": labels, "repeats": repeats, "val_size": val_size, "seed": seed,
        **({"c_grid": list(c_grid)} if "alitool" in protocols else {}),
        **({"official_c_grid": list(OFFICIAL_C_GRID), "selection_set_size": len(splits.selection)}
           if splits.selection is not None else {}),
        "results": [r.to_dict() for r in results], **_provenance(),
    }


def classify_report(run: Path, dataset: str | None = None, data_dir: str = "", z: str = "mean",
                    device: str = "cpu", batch_size: int = 500) -> dict:
    """Test error of a K+1 run's discriminator as a classifier: argmax_k<=K D(x, z)_k with z = mu(x) or a sample."""
    import torch

    from alitool.checkpoint import load_checkpoint
    from alitool.models import Discriminator, Encoder
    from alitool.runs import run_checkpoint
    from alitool.trainers.semi import class_logits, kplus1_config

    checkpoint = run_checkpoint(run)
    payload = load_checkpoint(checkpoint, map_location=device)
    cfg = payload["config"]
    semi = cfg.train.semi_supervised
    if semi.labels <= 0:
        raise UserError(f"{checkpoint}: not a semi-supervised run (train.semi_supervised.labels is 0); its "
                        "discriminator has no class outputs. Train one with --set train.semi_supervised.labels=1000")
    cfg = kplus1_config(cfg)
    encoder, discriminator = Encoder(cfg), Discriminator(cfg)
    encoder.load_state_dict(payload["models"]["encoder"])
    discriminator.load_state_dict(payload["models"]["discriminator"])
    encoder.to(device).eval()
    discriminator.to(device).eval()
    data_cfg = dataset_config(dataset, {}) if dataset else cfg
    _, test = load_pool_and_test(data_cfg, data_dir)
    check_shapes(test.x, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size), str(checkpoint),
                 data_cfg.data.name)
    torch.manual_seed(0)  # z="sample" draws eps: the same numbers every time
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(test), batch_size):
            x = test.float_batch(slice(start, start + batch_size)).to(device)
            predictions.append(class_logits(encoder, discriminator, x, z).argmax(dim=1).cpu().numpy())
    predicted = np.concatenate(predictions)
    wrong = predicted != test.y
    per_class = {int(c): float(wrong[test.y == c].mean()) for c in np.unique(test.y)}
    labelled = payload["extra"].get("labelled_indices")
    return {
        "evaluation": "k+1-classifier", "run": str(checkpoint), "dataset": data_cfg.data.name, "z": z,
        "test_size": len(test), "test_error": float(wrong.mean()), "per_class_error": per_class,
        "labels": semi.labels, "classes": semi.classes, "step": payload["step"],
        "labelled_indices_saved": labelled is not None and len(labelled) == semi.labels, **_provenance(),
    }


def _provenance() -> dict:
    return {"alitool_version": __version__, "machine": platform.platform(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def default_report_path(model: Path, name: str) -> Path:
    """Where a report goes without --out: ``eval/<name>`` in the run folder (or beside the model file)."""
    folder = model if model.is_dir() else model.parent
    return folder / "eval" / name


def write_json(path: Path, report: dict) -> None:
    atomic_write_bytes(Path(path), lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
