"""The one training loop, shared by every game (ALI, and the baselines that build on it).

A *game* owns its networks and optimizers and exposes ``modules()``, ``optimizers()``, ``init_from_data()``,
``step(x) -> metrics``, ``sample(z)``, ``reconstruct(x)`` and ``train(mode)``. The loop does the rest:
seeding, batching, progress bar, NaN/inf guard, atomic checkpoints, resume, metrics.csv, figures.

Resume is exact in position: the batch order of an epoch is a function of (seed, epoch), so a resumed run
skips the batches the checkpoint had already done and continues with the same step counter, optimizer
state and random-number state.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alitool import conv_autotune
from alitool.atomic import atomic_write_bytes
from alitool.checkpoint import load_checkpoint, save_checkpoint
from alitool.config import Config, dump_yaml
from alitool.contract.names import CHECKPOINT, LOSS_PLOT, METRICS, RECONSTRUCTIONS_DIR, RUN_CONFIG, SAMPLES_DIR
from alitool.data import ArrayDataset, iterate_batches, load_dataset
from alitool.errors import TrainingDiverged, UserError
from alitool.trainers.distributed import DistInfo, average_scalars, device_for
from alitool.trainers.speed import describe_precision
from alitool.viz import posterior_caption, save_grid, save_loss_plot, save_reconstruction_panels

# Where stderr is not a terminal (nohup, CI, a batch scheduler) tqdm draws nothing; the loop then logs one
# progress line this often instead, so a long epoch is never silent.
PLAIN_PROGRESS_SECONDS = 60.0

# seconds: the epoch's wall time; cpu_seconds: this process's CPU time in it (all its threads). Summed over the rows,
# they are a resumed run's whole cost, every session included.
METRIC_FIELDS = ("epoch", "step", "loss_d", "loss_g", "d_real", "d_fake", "recon_mse", "images_per_s", "seconds",
                 "cpu_seconds")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class StopRequests:
    """SIGINT / SIGTERM during training ask for a clean stop: the loop finishes its step, writes the epoch's
    figures, metrics and a checkpoint, then ends (KeyboardInterrupt). A second signal stops at once; the last
    checkpoint on disk is still whole, since every write is atomic."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class Position:
    """Where training stands: ``batch`` batches of epoch ``epoch`` are done, ``step`` in total."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def schedule_learning_rates(game, schedule: str, step: int, total: int) -> None:
    """``train.lr_schedule``: ``constant`` leaves the learning rates alone; ``linear`` makes every optimizer's
    learning rate fall from its initial value to 0 at the end of the run. Computed from the step alone (the
    initial value rides in the optimizer state as ``initial_lr``), so a resumed run continues the same schedule."""
    if schedule != "linear":
        return
    for opt in game.optimizers().values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * (1.0 - step / total)


def _default_game(cfg: Config, device: torch.device):
    if cfg.train.semi_supervised.labels:  # the K+1 semi-supervised game (paper section 4.3)
        from alitool.trainers.semi import SemiSupervisedGame

        return SemiSupervisedGame(cfg, device)
    from alitool.trainers.ali import ALIGame

    return ALIGame(cfg, device)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, data_dir: str = "",
                 game_factory: Callable | None = None, log: Callable[[str], None] | None = None,
                 train_data: ArrayDataset | None = None, eval_data: ArrayDataset | None = None,
                 dist: DistInfo | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist or DistInfo()
        # Only rank 0 talks, draws and writes files; the other processes train silently.
        self.log = (log or (lambda msg: print(msg, file=sys.stderr))) if self.dist.is_main else (lambda msg: None)
        self.device = device_for(self.dist, pick_device(cfg.train.device))
        seed_everything(cfg.train.seed)
        self.train_data = train_data or load_dataset(cfg, "train", data_dir)
        self.eval_data = eval_data or self._eval_split(data_dir)
        # Conditional ALI (section 4.4): the data says what y is (classes or attributes); the checkpoint records it.
        self.condition = None
        if cfg.model.conditional:
            from alitool.conditional import condition_of, conditional_config

            cfg = self.cfg = conditional_config(cfg, self.train_data)
            self.condition = condition_of(cfg.model)
        self.steps_per_epoch = len(self.train_data) // cfg.train.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the {cfg.data.name} training split has {len(self.train_data)} examples, fewer than one batch of "
                f"{cfg.train.batch_size}; lower --batch-size"
            )
        if cfg.train.batch_size % self.dist.world_size:
            raise UserError(f"batch size {cfg.train.batch_size} does not split evenly over {self.dist.world_size} "
                            "processes")
        self.game = (game_factory or _default_game)(cfg, self.device)
        # A game may refine the config (the K+1 game widens D's last row): the checkpoint describes its networks.
        self.cfg = getattr(self.game, "cfg", cfg)
        if hasattr(self.game, "attach_data"):  # games that need more than x (the K+1 game's labelled subset)
            # the labels may come from another split (SVHN's val); the monitoring images then never include them
            self.game.attach_data(self.train_data, lambda split: load_dataset(cfg, split, data_dir))
            self.eval_data = self.game.without_labelled(self.eval_data)
        if self.dist.enabled:
            self.game.distribute()  # DDP broadcasts rank 0's initial weights to every process
            if not self.dist.is_main:  # independent z, eps and dropout noise per process
                torch.manual_seed(cfg.train.seed + 7919 * self.dist.rank)
        self.pos = Position()
        self.metrics: list[dict[str, float]] = []
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        n_grid = cfg.train.sample_grid
        self.fixed_z = torch.randn(n_grid, cfg.model.latent_dim, generator=gen)
        self.fixed_x = self.eval_data.float_batch(slice(0, min(n_grid // 2, len(self.eval_data))))
        # y for the figures: the shown images' own y, and for samples the classes in turn (or real attribute rows).
        self.fixed_y: dict[str, dict[str, torch.Tensor]] = {"sample": {}, "reconstruct": {}}
        if self.condition is not None:
            c = self.condition
            rows = np.arange(n_grid) % (c.dim if c.kind == "class" else len(self.eval_data))
            sample_y = c.one_hot(rows) if c.kind == "class" else c.rows(self.eval_data, rows)
            self.fixed_y = {"sample": {"y": torch.from_numpy(sample_y)},
                            "reconstruct": {"y": torch.from_numpy(c.rows(self.eval_data, slice(0, len(self.fixed_x))))}}

    def _eval_split(self, data_dir: str) -> ArrayDataset:
        for split in ("val", "test"):
            try:
                return load_dataset(self.cfg, split, data_dir)
            except UserError:
                continue
        self.log(f"note: no val or test split of {self.cfg.data.name} found; the reconstruction grids and "
                 "recon_mse use training images")
        return self.train_data

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    # -- starting ---------------------------------------------------------------------------------------
    def start_fresh(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.game.init_from_data(self.train_data.mean_image(self.cfg.data.bias_init_images))
        self._write_run_config()

    def _write_run_config(self) -> None:
        """The run folder's config.yaml: the config this run trains with now (a resumed run's may be longer)."""
        if self.dist.is_main:
            atomic_write_bytes(self.run_dir / RUN_CONFIG, lambda f: f.write(dump_yaml(self.cfg).encode()))

    def resume(self) -> None:
        payload = load_checkpoint(self.checkpoint_path, map_location=self.device)
        for name, module in self.game.modules().items():
            module.load_state_dict(payload["models"][name])
        for name, opt in self.game.optimizers().items():
            opt.load_state_dict(payload["optimizers"][name])
        extra = payload["extra"]
        self.pos = Position(payload["step"], payload["epoch"], int(extra.get("batch", 0)))
        self.metrics = [dict(row) for row in extra.get("metrics", [])]
        if "torch_rng" in extra and self.dist.is_main:
            torch.set_rng_state(extra["torch_rng"])
        if hasattr(self.game, "restore_extra_state"):  # the K+1 game's labelled subset, as the run drew it
            self.game.restore_extra_state(extra)
        self._write_run_config()
        self.log(f"resumed {self.checkpoint_path} at step {self.pos.step} (epoch {self.pos.epoch + 1}, "
                 f"batch {self.pos.batch}/{self.steps_per_epoch})")

    # -- saving -----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint, but only if every parameter is finite: a bad state never replaces a good one.
        Rank 0 writes it; DDP keeps the weights identical on every process."""
        if not self.dist.is_main:
            return
        for name, module in self.game.modules().items():
            for pname, p in module.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingDiverged(
                        f"step {self.pos.step}: parameter {name}.{pname} is not finite; kept the last good "
                        f"checkpoint {self.checkpoint_path}"
                    )
        save_checkpoint(
            self.checkpoint_path, cfg=self.cfg, models=self.game.modules(), optimizers=self.game.optimizers(),
            step=self.pos.step, epoch=self.pos.epoch,
            extra={"batch": self.pos.batch, "metrics": self.metrics, "torch_rng": torch.get_rng_state(),
                   "game": self.game.name, **(self.game.extra_state() if hasattr(self.game, "extra_state") else {})},
        )

    def write_figures(self, epoch_label: str) -> float:
        """Samples and reconstructions for this epoch; returns the reconstruction MSE on the fixed batch, of the
        posterior-mean reconstructions.

        The reconstruction figure has two captioned panels: G_x(mu(x)), the posterior mean (what every game's
        ``reconstruct`` returns), and G_x(z) with z drawn from q(z | x), what the paper's figures 2-5 show. A game
        whose encoder has nothing to draw (none, or a deterministic one) gets the mean panel alone.
        """
        self.game.train(False)
        samples = self.game.sample(self.fixed_z, **self.fixed_y["sample"]).cpu()
        recon = self.game.reconstruct(self.fixed_x, **self.fixed_y["reconstruct"]).cpu()
        drawn = self._posterior_sample_reconstruction() if samples.dim() == 4 else None
        self.game.train(True)
        if samples.dim() == 4:  # images; vector data (2-D toy) draws its own figures
            # the pictures are drawn in NumPy (alitool.viz is shared with the torch-free running side)
            save_grid(self.run_dir / SAMPLES_DIR / f"epoch_{epoch_label}.png", samples.numpy())
            panels = [(posterior_caption("mean"), recon.numpy())]
            if drawn is not None:
                panels.append((posterior_caption("sample") + ", same eps every epoch", drawn.numpy()))
            save_reconstruction_panels(self.run_dir / RECONSTRUCTIONS_DIR / f"epoch_{epoch_label}.png",
                                       self.fixed_x.numpy(), panels)
        return float(((recon - self.fixed_x) ** 2).mean())

    @torch.no_grad()
    def _posterior_sample_reconstruction(self) -> torch.Tensor | None:
        """G_x(z), z drawn from q(z | x), for the fixed batch: the networks the pictures come from
        (``shown_networks``: the EMA copies with train.ema), or None for a game without them or with a
        deterministic encoder. eps comes from its own generator, seeded alike every epoch: the panels of two
        epochs differ by training alone, and the training's random stream (hence resume) is untouched."""
        from alitool.models import NoiseInput
        from alitool.trainers.speed import prepare_input

        shown = getattr(self.game, "shown_networks", None)
        if shown is None:
            return None
        encoder, decoder = shown()
        if not (encoder.stochastic or isinstance(encoder.stack, NoiseInput)):
            return None
        x = prepare_input(self.fixed_x.to(self.device), self.cfg.train.channels_last)
        y = self.fixed_y["reconstruct"].get("y")
        y = None if y is None else y.to(self.device, torch.float32)
        eps = torch.Generator().manual_seed(self.cfg.train.seed + 2)  # fixed_z uses seed + 1
        return decoder(encoder.sample(x, y, generator=eps), y).float().cpu()

    def write_metrics(self) -> None:
        buf = io.StringIO()
        # The fixed columns first, then what a game or switch adds (alice, loss_sup, acc_labelled ...).
        extra = [k for row in self.metrics for k in row if k not in METRIC_FIELDS]
        fields = [*METRIC_FIELDS, *dict.fromkeys(extra)]
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.metrics)
        atomic_write_bytes(self.run_dir / METRICS, lambda f: f.write(buf.getvalue().encode()))
        save_loss_plot(self.run_dir / LOSS_PLOT, self.metrics)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> Position:
        t = self.cfg.train
        total = t.epochs * self.steps_per_epoch
        if t.max_steps:
            total = min(total, t.max_steps)
        if self.pos.step >= total:
            self.log(f"nothing to do: step {self.pos.step} already reached the target of {total} steps")
            return self.pos
        self.log(f"training {self.cfg.name} on {self.device}, {describe_precision(self.cfg, self.device)}: "
                 f"step {self.pos.step} -> {total}")
        self.game.train(True)
        bar = tqdm(total=total, initial=self.pos.step, desc=f"train {self.cfg.name}", unit="step",
                   dynamic_ncols=True, disable=None if self.dist.is_main else True, file=sys.stderr)
        last_save = time.monotonic()
        plain_progress = PlainProgress(self.log, self.pos.step, total) if bar.disable and self.dist.is_main else None
        stop = StopRequests()
        # the layers' CPU convolution paths (alitool/conv_autotune.py); nothing to tell for MLPs (the 2-D mixture)
        conv_paths_told = self.device.type != "cpu" or not any(
            isinstance(layer, torch.nn.modules.conv._ConvNd)
            for net in self.game.modules().values() for layer in net.modules())
        step_check = conv_autotune.StepCheck(t.conv_path if self.device.type == "cpu" else "onednn")
        try:
            stop.__enter__()
            while self.pos.step < total and stop.signum is None:
                sums: dict[str, float] = {}
                n_steps, images, started, cpu_started = 0, 0, time.perf_counter(), time.process_time()
                batches = iterate_batches(len(self.train_data), t.batch_size, t.seed, self.pos.epoch, self.pos.batch)
                for index in batches:
                    mine = index[self.dist.rank :: self.dist.world_size]  # this process's share of the batch
                    x = self.train_data.float_batch(mine).to(self.device, non_blocking=True)
                    cond = {} if self.condition is None else {
                        "y": torch.from_numpy(self.condition.rows(self.train_data, mine)).to(self.device)}
                    schedule_learning_rates(self.game, t.lr_schedule, self.pos.step, total)
                    with step_check.step():
                        scalars = self.game.step(x, **cond)
                    values = {k: float(v) for k, v in average_scalars(scalars, self.dist).items()}
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingDiverged(
                            f"step {self.pos.step + 1}: {bad[0]} became {values[bad[0]]}; kept the last good "
                            f"checkpoint {self.checkpoint_path} (try a lower learning rate: --set train.lr=...)"
                        )
                    self.pos.step += 1
                    self.pos.batch += 1
                    if not conv_paths_told:  # the layer shapes are known, and timed, once a step has run
                        conv_paths_told = True
                        self.log(conv_autotune.describe(t.conv_path))
                    verdict = step_check.report()
                    if verdict:
                        self.log(verdict)
                    n_steps += 1
                    images += len(index)
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    rate = images / max(time.perf_counter() - started, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss_d=f"{values['loss_d']:.3f}", loss_g=f"{values['loss_g']:.3f}",
                                    img_s=f"{rate:.0f}", refresh=False)
                    if plain_progress:
                        plain_progress.update(self.pos.step, values, rate)
                    if self.pos.step >= total or stop.signum is not None:
                        break
                    if (t.checkpoint_every_steps and self.pos.step % t.checkpoint_every_steps == 0) or \
                            time.monotonic() - last_save > t.checkpoint_every_minutes * 60:
                        self.save()
                        last_save = time.monotonic()
                epoch_done = self.pos.batch >= self.steps_per_epoch
                self._end_epoch(sums, n_steps, images, time.perf_counter() - started,
                                time.process_time() - cpu_started, partial=not epoch_done)
                if epoch_done:
                    self.pos.epoch += 1
                    self.pos.batch = 0
                self.save()
                last_save = time.monotonic()
        finally:
            stop.__exit__()
            bar.close()
        if stop.signum is not None:
            self.log(f"stopped by {signal.Signals(stop.signum).name} at step {self.pos.step}; checkpoint saved: "
                     f"{self.checkpoint_path} (continue with --resume {self.run_dir})")
            raise KeyboardInterrupt
        return self.pos

    def _end_epoch(self, sums: dict[str, float], n_steps: int, images: int, seconds: float, cpu_seconds: float,
                   partial: bool) -> None:
        if n_steps == 0 or not self.dist.is_main:
            return
        label = f"{self.pos.epoch + 1:03d}"
        row: dict[str, float] = {"epoch": self.pos.epoch + (self.pos.batch / self.steps_per_epoch if partial else 1),
                                 "step": self.pos.step}
        row.update({k: v / n_steps for k, v in sums.items()})
        row["recon_mse"] = self.write_figures(label)
        row["images_per_s"] = images / max(seconds, 1e-9)
        row["seconds"] = seconds
        row["cpu_seconds"] = cpu_seconds
        self.metrics = [m for m in self.metrics if m["epoch"] < row["epoch"]] + [row]
        self.write_metrics()
        self.log(f"epoch {row['epoch']:.2f} step {self.pos.step}: loss_d {row['loss_d']:.3f} "
                 f"loss_g {row['loss_g']:.3f} recon_mse {row['recon_mse']:.4f} "
                 f"({row['images_per_s']:.0f} img/s, {seconds:.1f} s)")


class PlainProgress:
    """The progress bar's content as a log line every PLAIN_PROGRESS_SECONDS, for logs that are files."""

    def __init__(self, log: Callable[[str], None], first_step: int, total: int):
        self.log, self.first_step, self.total = log, first_step, total  # first_step: where this fit (re)started
        self.started = self.last = time.monotonic()

    def update(self, step: int, values: dict[str, float], images_per_s: float) -> None:
        now = time.monotonic()
        if now - self.last < PLAIN_PROGRESS_SECONDS and step < self.total:
            return
        self.last = now
        per_step = (now - self.started) / max(step - self.first_step, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(per_step * (self.total - step)))
        self.log(f"step {step}/{self.total} ({100 * step / self.total:.0f}%): loss_d {values['loss_d']:.3f} "
                 f"loss_g {values['loss_g']:.3f}, {images_per_s:.0f} img/s, {per_step:.2f} s/step, {eta} left")
