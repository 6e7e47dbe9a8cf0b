"""What ``alitool train`` trains: a fresh config, or a run to continue with the config saved in its checkpoint.

The run folders themselves (names, the newest run of a config) are ``alitool.runs``; this is the training side of
them, since continuing a run reads its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from alitool.checkpoint import load_checkpoint
from alitool.config import apply_overrides, from_dict, load_config, to_dict, with_train
from alitool.contract.names import CHECKPOINT
from alitool.errors import UserError
from alitool.runs import DEFAULT_ROOT, NEWEST, newest_run


def run_config(config: str, overrides: list[str] | tuple[str, ...] = (), train_changes: dict | None = None,
               resume: str | Path | None = None, out: Path | None = None, root: Path = DEFAULT_ROOT):
    """What ``alitool train`` trains: ``(config, run folder)``.

    A fresh run (``resume`` None): the config ``config`` with ``overrides`` and ``train_changes`` (CLI flags such as
    --epochs), and no folder yet (None: ``out``, or ``new_run_dir`` when training starts). A resumed run
    (``resume`` a run folder, or ``NEWEST``: ``out``, else the newest run of ``config``): the config saved in its
    checkpoint, with the same overrides and changes on top; its networks cannot change shape, so
    ``model.conditional`` stays as it was."""
    changes = train_changes or {}
    if resume is None:
        if out is not None and (out / CHECKPOINT).exists():
            raise UserError(f"{out} already holds a run; use --resume {out} to continue it, or another --out")
        return with_train(load_config(config, overrides), **changes), None
    if resume != NEWEST:
        run_dir = Path(resume)
    else:
        run_dir = out if out is not None else newest_run(root, name=load_config(config).name)
    saved = load_checkpoint(run_dir / CHECKPOINT)["config"]
    cfg = with_train(from_dict(apply_overrides(to_dict(saved), list(overrides))), **changes)
    if cfg.model.conditional != saved.model.conditional:
        raise UserError(f"{run_dir}: a resumed run keeps its networks; it was trained "
                        f"{'with' if saved.model.conditional else 'without'} model.conditional")
    return cfg, run_dir
