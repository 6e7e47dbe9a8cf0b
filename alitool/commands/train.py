"""`alitool train`: train ALI (or a config's game) on a dataset, resumable."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from alitool.commands import user_errors
from alitool.config import SEED_MAX
from alitool.contract.names import LOSS_PLOT, METRICS, RECONSTRUCTIONS_DIR, SAMPLES_DIR
from alitool.runs import NEWEST


@click.command()
@click.argument("dataset", required=False, default=None)  # None: digits, or the run that --resume names
@click.option("--data-dir", default="", help="Where the dataset's files are (default: the dataset's usual place).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<name>, then runs/<name>-2, ...).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs (overrides train.epochs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size (overrides train.batch_size).")
@click.option("--max-steps", type=click.IntRange(min=0), default=None,
              help="Stop after this many steps in total (smoke tests). 0: write the initialised, untrained "
                   "networks and stop (the untrained baseline for alitool eval).")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None, help="Random seed (overrides train.seed).")
@click.option("--resume", "resume", is_flag=False, flag_value=NEWEST, default=None, metavar="[RUN]",
              help="Continue a run from its last checkpoint (default: the newest run of DATASET).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr=2e-4 --set model.latent_dim=32.")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Data-parallel processes on this machine (DistributedDataParallel through torchrun).")
@click.option("--threads", type=click.IntRange(0, 4096), default=0,
              help="CPU threads for PyTorch (default: chosen from the model size and the free cores; the log says "
                   "how many and why).")
@click.option("--conditional", is_flag=True,
              help="Conditional ALI (paper section 4.4): condition on the dataset's classes or CelebA's attributes "
                   "(sets model.conditional=true).")
@user_errors
def train(dataset, data_dir, out, epochs, batch_size, max_steps, device, seed, resume, overrides, nproc,
          threads, conditional) -> None:
    """Train ALI on DATASET (a config name from configs/ or a path to a YAML file).

    \b
    Examples:
      alitool train digits                          # real data bundled with scikit-learn, CPU-sized
      alitool train svhn --data-dir ~/data/svhn     # the paper's SVHN model (table 4)
      alitool train digits --max-steps 50 --set train.lr=2e-4
      alitool train fashion-mnist --max-steps 0 --out runs/fm-init   # the untrained network, for eval svm
      alitool train digits --resume                 # continue the newest digits run
      alitool train digits --resume runs/digits-2   # continue that run
      alitool train digits --nproc 2                # 2 processes (DDP, gloo on CPU / NCCL on GPU)
      alitool train celeba --conditional            # conditional ALI on the 40 attributes (section 4.4)
      torchrun --nproc-per-node 4 -m alitool.cli train svhn --out runs/svhn-ddp   # or torchrun directly
    """
    from alitool.install import require_training_stack

    require_training_stack("alitool train")
    from alitool.runs import DEFAULT_ROOT, new_run_dir
    from alitool.trainers import distributed
    from alitool.trainers.resume import run_config

    # --max-steps 0 asks for the initialised networks (in the config, max_steps 0 means "no limit").
    untrained = max_steps == 0
    flags = {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps or None, "device": device,
             "seed": seed}
    flags = {k: v for k, v in flags.items() if v is not None}
    if conditional:
        overrides = (*overrides, "model.conditional=true")
    cfg, run_dir = run_config(dataset, overrides, flags, resume=resume, out=out, root=DEFAULT_ROOT)
    if cfg.model.conditional:
        from alitool.conditional import check_conditional_dataset

        check_conditional_dataset(cfg.data.name)  # one line before any data is read (folder, mixture25)

    if nproc > 1 and not distributed.launched_by_torchrun():
        # Choose the run folder once, here, then start nproc copies of this command under torchrun.
        run_dir = run_dir or out or new_run_dir(cfg.name, DEFAULT_ROOT)
        argv = _without_nproc(sys.argv[1:])
        if resume is None and out is None:
            argv += ["--out", str(run_dir)]
        raise SystemExit(distributed.relaunch_with_torchrun(nproc, argv))

    if threads > 0:  # an explicit count applies from the start: reading the data and building the networks too
        import torch

        torch.set_num_threads(threads)
    dist = distributed.init_from_env(cfg.train.device)
    if run_dir is None:  # a fresh run: rank 0 picks the folder, every process uses it
        run_dir = out or distributed.broadcast_object(new_run_dir(cfg.name, DEFAULT_ROOT) if dist.is_main else None,
                                                      dist)
    if dist.is_main:  # one training process per run folder: a second one gets one line (alitool.outputs)
        from alitool.trainers.resume import claim_run_folder

        click.get_current_context().call_on_close(claim_run_folder(run_dir, fresh=resume is None).release)

    from alitool.trainers.loop import Trainer

    try:
        trainer = Trainer(cfg, run_dir, data_dir=data_dir, dist=dist)
    except BaseException:
        _remove_if_empty(Path(run_dir))  # e.g. the data is missing: leave no empty runs/<name>/ behind
        raise
    from alitool.trainers.cpu_threads import set_training_threads

    thread_choice = set_training_threads(trainer.cfg, trainer.device, threads, dist)
    if resume is not None:
        trainer.resume()
    else:
        trainer.start_fresh()
    if dist.is_main:
        click.echo(f"run folder: {run_dir}  (device {trainer.device}, {trainer.steps_per_epoch} steps/epoch"
                   f"{f', {dist.world_size} processes' if dist.enabled else ''})", err=True)
        click.echo(thread_choice.reason, err=True)
    try:
        if untrained:
            _write_untrained(trainer, fresh=resume is None)
            return
        pos = trainer.fit()
    finally:
        distributed.shutdown(dist)
    if not dist.is_main:
        return
    click.echo(f"done at step {pos.step}. checkpoint: {trainer.checkpoint_path}")
    last = sorted((run_dir / SAMPLES_DIR).glob("*.png"))
    if last:
        click.echo(f"samples: {last[-1]}\nreconstructions: {run_dir / RECONSTRUCTIONS_DIR / last[-1].name}")
    click.echo(f"metrics: {run_dir / METRICS}, loss plot: {run_dir / LOSS_PLOT}")


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only succeeds on an empty folder
    except OSError:
        pass


def _without_nproc(argv: list[str]) -> list[str]:
    """argv with --nproc N / --nproc=N removed (the relaunched processes must not relaunch again)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def _write_untrained(trainer, fresh: bool) -> None:
    """--max-steps 0: the networks as initialised (data-dependent output bias included), saved as a step-0
    checkpoint: the untrained baseline that a representation's evaluation is set against (paper section 4.3)."""
    if not trainer.dist.is_main:
        return
    if fresh:
        trainer.save()
        click.echo(f"done at step 0 (--max-steps 0: the initialised, untrained networks). checkpoint: "
                   f"{trainer.checkpoint_path}")
    else:
        click.echo(f"nothing to do: --max-steps 0 with --resume leaves {trainer.checkpoint_path} as it is")
