"""`alitool train`: train ALI (or a config's game) on a dataset, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from alitool.commands import user_errors
from alitool.errors import UserError


@click.command()
@click.argument("dataset", default="digits")
@click.option("--data-dir", default="", help="Where the dataset's files are (default: the dataset's usual place).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<name>, then runs/<name>-2, ...).")
@click.option("--epochs", type=int, default=None, help="Number of epochs (overrides train.epochs).")
@click.option("--batch-size", type=int, default=None, help="Batch size (overrides train.batch_size).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in total (smoke tests).")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, default=None, help="Random seed (overrides train.seed).")
@click.option("--resume", "resume", is_flag=False, flag_value="__newest__", default=None, metavar="[RUN]",
              help="Continue a run from its last checkpoint (default: the newest run of DATASET).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr=2e-4 --set model.latent_dim=32.")
@user_errors
def train(dataset, data_dir, out, epochs, batch_size, max_steps, device, seed, resume, overrides) -> None:
    """Train ALI on DATASET (a config name from configs/ or a path to a YAML file).

    \b
    Examples:
      alitool train digits                          # real data bundled with scikit-learn, CPU-sized
      alitool train svhn --data-dir ~/data/svhn     # the paper's SVHN model (table 4)
      alitool train digits --max-steps 50 --set train.lr=2e-4
      alitool train digits --resume                 # continue the newest digits run
      alitool train digits --resume runs/digits-2   # continue that run
    """
    from alitool.config import load_config, with_train
    from alitool.runs import DEFAULT_ROOT, new_run_dir

    flags = {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps, "device": device, "seed": seed}
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        from alitool.checkpoint import load_checkpoint
        from alitool.config import apply_overrides, from_dict, to_dict

        run_dir = _resume_dir(resume, dataset, out, DEFAULT_ROOT)
        cfg = load_checkpoint(run_dir / "checkpoint.pt")["config"]
        cfg = with_train(from_dict(apply_overrides(to_dict(cfg), list(overrides))), **flags)
    else:
        cfg = with_train(load_config(dataset, overrides), **flags)
        run_dir = out if out is not None else new_run_dir(cfg.name, DEFAULT_ROOT)
        if out is not None and (out / "checkpoint.pt").exists():
            raise UserError(f"{out} already holds a run; use --resume {out} to continue it, or another --out")

    from alitool.trainers.loop import Trainer

    trainer = Trainer(cfg, run_dir, data_dir=data_dir)
    if resume is not None:
        trainer.resume()
    else:
        trainer.start_fresh()
    click.echo(f"run folder: {run_dir}  (device {trainer.device}, {trainer.steps_per_epoch} steps/epoch)", err=True)
    pos = trainer.fit()
    click.echo(f"done at step {pos.step}. checkpoint: {trainer.checkpoint_path}")
    last = sorted((run_dir / "samples").glob("*.png"))
    if last:
        click.echo(f"samples: {last[-1]}\nreconstructions: {run_dir / 'reconstructions' / last[-1].name}")
    click.echo(f"metrics: {run_dir / 'metrics.csv'}, loss plot: {run_dir / 'losses.png'}")


def _resume_dir(resume: str, dataset: str, out: Path | None, root: Path) -> Path:
    if resume != "__newest__":
        return Path(resume)
    if out is not None:
        return out
    from alitool.config import load_config

    name = load_config(dataset).name
    runs = [p for p in root.glob(f"{name}*/checkpoint.pt")] if root.is_dir() else []
    if not runs:
        raise UserError(f"no {name} run with a checkpoint under {root}/ to resume")
    return max(runs, key=lambda p: p.stat().st_mtime).parent
