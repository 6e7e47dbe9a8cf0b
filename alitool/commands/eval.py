"""`alitool eval svm | classify`: representation quality (paper section 4.3, tables 1-2). Library code:
``alitool.evaluation``; the protocol and the feature vectors are described in docs/evaluation.md."""

from __future__ import annotations

from pathlib import Path

import click

from alitool.backends import BACKEND_CHOICES
from alitool.commands import user_errors
from alitool.errors import UserError


@click.group(name="eval")
def eval_group() -> None:
    """Measure representation quality: the L2-SVM protocol and the K+1 classifier (paper section 4.3).

    \b
    Examples:
      alitool eval svm runs/fashion-mnist --labels 1000 --repeats 100
      alitool eval classify runs/fashion-mnist-2
    """


def _parse_grid(text: str) -> tuple[float, ...]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--c-grid {text!r}: expected comma-separated numbers, e.g. 1e-3,1e-2,0.1") from None
    if not values or min(values) <= 0:
        raise UserError(f"--c-grid {text!r}: expected positive numbers")
    return tuple(values)


@eval_group.command()
@click.argument("run", required=False, default=None)
@click.option("--dataset", default=None, help="Config name or YAML whose data section is evaluated on "
              "(default: the model's own training config).")
@click.option("--data-dir", default="", help="Where the dataset's files are (default: the dataset's usual place).")
@click.option("--labels", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Labelled examples per SVM (balanced).")
@click.option("--repeats", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="SVMs on different labelled sets.")
@click.option("--val-size", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Validation examples that choose C (disjoint from every labelled set and from test).")
@click.option("--features", type=click.Choice(["paper", "mean"]), default="paper", show_default=True,
              help="paper: encoder output + last three hidden layers (section 4.3); mean: mu(x). For alitool's "
              "protocol; the official one has its own vector.")
@click.option("--protocol", type=click.Choice(["alitool", "official", "both"]), default="alitool", show_default=True,
              help="alitool: standardised features, C per repeat from --c-grid. official: the authors' script "
              "(mu + pre-activation hidden layers, raw features, C chosen once from exp(-20..20)); PyTorch "
              "checkpoints only. both: one table, same splits.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also run raw pixels and PCA (latent_dim components) under the same splits.")
@click.option("--c-grid", default=",".join(f"{c:g}" for c in (1e-4, 1e-3, 1e-2, 1e-1, 1, 10)), show_default=True,
              help="Values of C tried on the validation split.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the splits and labelled sets.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Inference runtime; auto picks it from the model file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda ...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON report (default: <run>/eval/svm_<dataset>_<features>.json; _official.json, "
              "_<features>_both.json for the other protocols).")
@click.option("--quiet", is_flag=True, help="Only the table (no per-repeat progress).")
@user_errors
def svm(run, dataset, data_dir, labels, repeats, val_size, features, protocol, baselines, c_grid, seed, backend,
        device, out, quiet) -> None:
    """L2-SVM test error on RUN's features, against raw pixels and PCA (paper section 4.3, table 1).

    RUN is a run folder, checkpoint .pt, exported .onnx / INT8 .onnx file or export folder (default: the newest
    run). Prints a table and writes a JSON report.

    \b
    Examples:
      alitool eval svm runs/fashion-mnist                      # 1000 labels, 100 repeats, paper features
      alitool eval svm runs/fashion-mnist/export/encoder.onnx --repeats 10
      alitool eval svm runs/digits --labels 100 --val-size 400 --repeats 20
      alitool eval svm runs/svhn --data-dir ~/data/svhn        # table 1 (paper: 19.14 +- 0.50 %)
      alitool eval svm runs/svhn --data-dir ~/data/svhn --protocol both   # alitool's and the authors' rule
    """
    from alitool.install import require_training_stack

    require_training_stack("alitool eval svm")
    from alitool.backends.opening import describe_model, open_model
    from alitool.evaluation.reports import default_report_path, svm_report, write_json
    from alitool.runs import newest_run

    model = Path(run) if run else newest_run()
    loaded = open_model(model, backend, device)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    log(describe_model(model, loaded))
    report = svm_report(model, loaded, dataset=dataset, data_dir=data_dir, labels=labels, repeats=repeats,
                        val_size=val_size, features=features, baselines=baselines, seed=seed,
                        c_grid=_parse_grid(c_grid), protocol=protocol, log=log)
    # alitool's protocol keeps its old file name; the others say which rule made them
    stem = {"alitool": features, "official": "official", "both": f"{features}_both"}[protocol]
    path = out or default_report_path(model, f"svm_{report['dataset']}_{stem}.json")
    write_json(path, report)
    click.echo(report["table"])
    click.echo(f"report: {path}")


@eval_group.command()
@click.argument("run", required=False, default=None)
@click.option("--dataset", default=None, help="Config name or YAML to test on (default: the run's own config).")
@click.option("--data-dir", default="", help="Where the dataset's files are (default: the dataset's usual place).")
@click.option("--z", "z", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="Pair each test image with mu(x) or with a sample z_hat ~ q(z|x).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda ...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON report (default: <run>/eval/classify_<dataset>.json).")
@user_errors
def classify(run, dataset, data_dir, z, device, out) -> None:
    """Test error of a semi-supervised (K+1) run's discriminator used as a classifier (paper table 1).

    RUN is a run folder or checkpoint trained with --set train.semi_supervised.labels=N (default: newest run).

    \b
    Examples:
      alitool train fashion_mnist --set train.semi_supervised.labels=1000
      alitool eval classify runs/fashion-mnist-2
    """
    from alitool.install import require_training_stack

    require_training_stack("alitool eval classify")
    from alitool.evaluation.reports import classify_report, default_report_path, write_json
    from alitool.runs import newest_run

    model = Path(run) if run else newest_run()
    report = classify_report(model, dataset=dataset, data_dir=data_dir, z=z, device=device)
    path = out or default_report_path(model, f"classify_{report['dataset']}.json")
    write_json(path, report)
    click.echo(f"K+1 discriminator as a classifier on {report['dataset']} test ({report['test_size']:,} images, "
               f"z = {z}): {100 * report['test_error']:.2f}% error  ({report['labels']} labels, step {report['step']})")
    click.echo(f"report: {path}")
