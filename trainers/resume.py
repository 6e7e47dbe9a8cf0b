"""What ``alitool train`` trains: a fresh config, or a run to continue with the config saved in its checkpoint.

The run folders themselves (names, the newest run of a config) are ``alitool.runs``; this is the training side of
them, since continuing a run reads its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from alitool.checkpoint import load_checkpoint
from alitool.config import apply_overrides, from_dict, load_config, to_dict, with_train
from alitool.contract.names import CHECKPOINT, RECONSTRUCTIONS_DIR, SAMPLES_DIR
from alitool.errors import UserError
from alitool.outputs import Claim, check_destination, claim
from alitool.runs import DEFAULT_ROOT, NEWEST, newest_run


def run_config(config: str | None, overrides: list[str] | tuple[str, ...] = (), train_changes: dict | None = None,
               resume: str | Path | None = None, out: Path | None = None, root: Path = DEFAULT_ROOT):
    """What ``alitool train`` trains: ``(config, run folder)``.

    A fresh run (``resume`` None): the config ``config`` with ``overrides`` and ``train_changes`` (CLI flags such as
    --epochs), and no folder yet (None: ``out``, or ``new_run_dir`` when training starts). A resumed run
    (``resume`` a run folder, or ``NEWEST``: ``out``, else the newest run of ``config``): the config saved in its
    checkpoint, with the same overrides and changes on top; its networks and data cannot change, so a change
    to the model section, data.name / image_size / channels, train.ema or the semi-supervised game is refused
    in one line naming what differs, and so is a ``config`` (None: not given; ``DEFAULT_CONFIG`` for a fresh
    run) whose data differs from the run's."""
    changes = train_changes or {}
    if out is not None:
        check_destination(out, folder=True)  # a file, a read-only parent: one line before anything is read
    if resume is None:
        if out is not None and (out / CHECKPOINT).exists():
            raise UserError(f"{out} already holds a run; use --resume {out} to continue it, or another --out")
        return with_train(load_config(config or DEFAULT_CONFIG, overrides), **changes), None
    if resume != NEWEST:
        run_dir = Path(resume)
    else:
        run_dir = out if out is not None else newest_run(root, name=load_config(config or DEFAULT_CONFIG).name)
    saved = load_checkpoint(run_dir / CHECKPOINT)["config"]
    cfg = with_train(from_dict(apply_overrides(to_dict(saved), list(overrides))), **changes)
    if cfg.model.conditional != saved.model.conditional:
        raise UserError(f"{run_dir}: a resumed run keeps its networks; it was trained "
                        f"{'with' if saved.model.conditional else 'without'} model.conditional")
    differences = resume_differences(saved, cfg)
    if config is not None:  # a dataset named beside the run: they must agree
        named = load_config(config).data
        differences += [f"data.{k}: the run has {getattr(saved.data, k)!r}, {config} has {getattr(named, k)!r}"
                        for k in _DATA_KEYS if getattr(saved.data, k) != getattr(named, k)]
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise UserError(f"{run_dir}: a resumed run keeps its networks and its data; "
                        f"{'; '.join(differences[:3])}{more}. Start a new run instead (without --resume)")
    return cfg, run_dir


DEFAULT_CONFIG = "digits"
# What a checkpoint's networks and optimiser states are made of: a resumed run cannot change them. train.ema
# decides whether the checkpoint holds the averaged networks; the semi-supervised game widens D's last layer.
_DATA_KEYS = ("name", "image_size", "channels")
_TRAIN_KEYS = ("ema",)
_SEMI_KEYS = ("labels", "classes")


def resume_differences(saved, cfg) -> list[str]:
    """``"key: the run has A, not B"`` for every architecture, dataset or network-set key that differs."""
    semi_old, semi_new = saved.train.semi_supervised, cfg.train.semi_supervised
    return [
        *tree_differences("model.", to_dict(saved.model), to_dict(cfg.model)),
        *tree_differences("data.", {k: getattr(saved.data, k) for k in _DATA_KEYS},
                          {k: getattr(cfg.data, k) for k in _DATA_KEYS}),
        *tree_differences("train.", {k: getattr(saved.train, k) for k in _TRAIN_KEYS},
                          {k: getattr(cfg.train, k) for k in _TRAIN_KEYS}),
        *tree_differences("train.semi_supervised.", {k: getattr(semi_old, k) for k in _SEMI_KEYS},
                          {k: getattr(semi_new, k) for k in _SEMI_KEYS}),
    ]


def tree_differences(prefix: str, old: dict, new: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """``"<prefix>key: the run has A, not B"`` for every leaf of the nested dicts ``old`` (the run's) and ``new``
    that differs; keys only in ``old``, and the dotted names in ``skip``, are not compared."""
    found = []
    for key in old:
        name = f"{prefix}{key}"
        if key not in new or name in skip:
            continue
        if isinstance(old[key], dict) and isinstance(new[key], dict):
            found += tree_differences(f"{name}.", old[key], new[key], skip)
        elif old[key] != new[key]:
            found.append(f"{name}: the run has {_short(old[key])}, not {_short(new[key])}")
    return found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def claim_run_folder(run_dir: str | Path, fresh: bool) -> Claim:
    """Lock the run folder for this training process (``alitool.outputs.claim``: ``.<name>.lock`` beside it), so
    that a second ``train --out`` or ``--resume`` of the same folder fails with one line naming this one instead
    of overwriting its checkpoint; stale temporaries of a killed run are removed. A fresh run is refused, under the
    lock, when the folder already holds a checkpoint (another run finished there since the first check)."""
    run_dir = Path(run_dir)
    held = claim(run_dir, folder=True, what="run folder", clean=(".", SAMPLES_DIR, RECONSTRUCTIONS_DIR))
    if fresh and (run_dir / CHECKPOINT).exists():
        held.release()
        raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or another --out")
    return held
