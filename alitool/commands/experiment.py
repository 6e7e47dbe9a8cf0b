"""`alitool experiment`: the paper's experiments that run end to end on a CPU (section 4.5: `mixture`)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from alitool.commands import user_errors
from alitool.contract.names import RUNS_ROOT

ALL_MODELS = "ali,gan,gan-inverse,gan-posthoc,vae"  # alitool.experiments.mixture_runs.MODELS (no torch import)


@click.group()
def experiment() -> None:
    """Reproduce the paper's experiments that run end to end here.

    \b
    Example:
      alitool experiment mixture --runs 10      # section 4.5 / figure 8: ALI against GAN and VAE in 2-D
    """


@experiment.command("mixture")
@click.option("--runs", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Seeds 0..N-1 per model.")
@click.option("--seeds", default="", metavar="LIST",
              help="The seeds to train instead of 0..N-1, e.g. 2 or 5-9 or 0,3: adds seeds to an --out that "
                   "holds others, or shares an experiment between machines. The table covers these seeds.")
@click.option("--models", default=ALL_MODELS, show_default=True, help="Comma-separated models to train and compare.")
@click.option("--out", type=click.Path(path_type=Path), default=Path(RUNS_ROOT) / "mixture-experiment",
              show_default=True,
              help="Folder for the run folders, table.md, results.json and figure8.png. Finished runs are reused.")
@click.option("--steps", type=click.IntRange(0), default=0,
              help="Training steps per run (default: the config's epochs; small values for a smoke test).")
@click.option("--jobs", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Runs trained side by side, one process and one thread each.")
@click.option("--paper-protocol", is_flag=True,
              help="The paper's setup instead of alitool's: its architecture (configs/mixture25_paper.yaml) and a "
                   "random draw of learning rate, beta1 and init std per seed.")
@click.option("--config", "config", default="", metavar="NAME|YAML",
              help="Config for every model (default: mixture25; mixture25_paper with --paper-protocol).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key for every model, e.g. --set train.lr=1e-3.")
@user_errors
def mixture(runs, seeds, models, out, steps, jobs, paper_protocol, config, overrides) -> None:
    """Train ALI, GAN, GAN + learned inverse mapping, GAN + post-hoc learned inference and a VAE on the 2-D
    mixture of 25 Gaussians (paper section 4.5) and compare them: a table of modes covered, samples within
    3 std of a mode, reconstruction agreement and q(z) against N(0, I) over the seeds, and a figure like the
    paper's figure 8 (the first seed of each model).

    \b
    Examples:
      alitool experiment mixture                              # 5 models x 10 seeds, alitool's mixture25 config
      alitool experiment mixture --runs 3 --models ali,gan    # a quicker comparison
      alitool experiment mixture --runs 1 --steps 200 --out /tmp/smoke
      alitool experiment mixture --paper-protocol --out runs/mixture-paper
      alitool experiment mixture --paper-protocol --seeds 10-14 --out runs/mixture-paper   # 5 seeds more
      alitool experiment mixture --models ali --runs 2 --set train.update=simultaneous --out runs/ablation
    """
    from alitool.install import require_training_stack

    require_training_stack("alitool experiment mixture")
    from alitool.experiments.mixture_runs import FIGURE, RESULTS, TABLE, Experiment, parse_models, parse_seeds
    from alitool.outputs import check_destination

    if seeds and click.get_current_context().get_parameter_source("runs") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--runs and --seeds both name the seeds; give one of them")
    seed_list = parse_seeds(seeds) if seeds else tuple(range(runs))
    check_destination(out, folder=True)  # a file, a read-only parent: one line before anything trains
    wanted = parse_models(models)
    exp = Experiment(out, wanted, seed_list, steps, jobs, paper_protocol, config, tuple(overrides),
                     log=lambda msg: click.echo(msg, err=True))
    click.echo(f"training {len(wanted)} model(s) x {len(seed_list)} seed(s) into {out / RUNS_ROOT} "
               f"({jobs} at a time)...", err=True)
    exp.run()

    which = f"--seeds {seeds}" if seeds else f"--runs {runs}"
    command = f"alitool experiment mixture {which} --models {','.join(wanted)} --out {out} --jobs {jobs}"
    command += (f" --steps {steps}" if steps else "") + (" --paper-protocol" if paper_protocol else "")
    command += f" --config {config}" if config else ""
    command += "".join(f" --set {o}" for o in overrides)
    click.echo(exp.write_report(command))
    click.echo(f"table: {out / TABLE}\nfigure: {out / FIGURE}\nper-run results: {out / RESULTS}")
