"""How well trained digits runs reconstruct and sample, for comparing runs that differ in one setting (e.g.
bf16 + channels_last against fp32, same seeds).

For each run folder (an `alitool train digits ...` run), on the held-out digits test split (359 images):
- reconstruction class agreement: a logistic-regression pixel classifier, fitted on the training split, gives
  G_x(mu(x)) the class of x (the classifier scores about 98 % on the originals);
- reconstruction MSE (the mean training image scores 0.074);
- samples: 1,000 draws z ~ N(0, I) classified the same way; the smallest class share shows collapse;
- the losses of the last 10 epochs (metrics.csv).

    python benchmarks/digits_quality.py runs/digits-fp32 runs/digits-bf16 ...
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from alitool.data import load_dataset
from alitool.trained_networks import load_networks


def last_epochs_losses(run: Path, epochs: int = 10) -> tuple[float, float]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))[-epochs:]
    return (float(np.mean([float(r["loss_d"]) for r in rows])), float(np.mean([float(r["loss_g"]) for r in rows])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    classifier, test = None, None
    print("| run | precision | channels_last | seed | recon class agreement | recon MSE | smallest sample class "
          "share | loss_d (last 10 ep.) | loss_g (last 10 ep.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        cfg, encoder, decoder = load_networks(run / "checkpoint.pt")
        if classifier is None:
            train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
            classifier = LogisticRegression(max_iter=2000).fit(
                train.float_batch(slice(None)).flatten(1).numpy(), train.y)
        x = test.float_batch(slice(None))
        with torch.no_grad():
            reconstructions = decoder(encoder(x)[0])
            samples = decoder(torch.randn(1000, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)))
        agreement = classifier.score(reconstructions.flatten(1).numpy(), test.y)
        mse = float(((reconstructions - x) ** 2).mean())
        shares = np.bincount(classifier.predict(samples.flatten(1).numpy()), minlength=10) / 1000
        loss_d, loss_g = last_epochs_losses(run)
        t = cfg.train
        print(f"| {run.name} | {t.precision} | {t.channels_last} | {t.seed} | {agreement:.1%} | {mse:.4f} | "
              f"{shares.min():.1%} | {loss_d:.3f} | {loss_g:.3f} |", flush=True)


if __name__ == "__main__":
    main()
