"""Training the runs of the paper's 2-D experiment (Dumoulin et al. 2017, section 4.5, figure 8).

Five models, each trained for a set of seeds (0..N-1 by default) through the one shared training loop
(``Trainer``) with its own game: ALI, GAN, GAN + learned inverse mapping, GAN + post-hoc learned inference, VAE.
The two GAN + inference models start from the GAN run of the same seed (its decoder, frozen), as in the paper.
Every run is an ordinary run folder (``<out>/runs/<model>/seed-<k>/``: checkpoint.pt, config.yaml, metrics.csv,
train.log) plus ``result.json`` with its metrics; a finished run is not trained again, and an interrupted one
continues from its last checkpoint, so an interrupted experiment resumes, and seeds can be added to an experiment
later (or trained on several machines) by naming them.

``paper_protocol``: the paper's random search, one draw of learning rate, beta1 and init std per seed on the
paper's architecture (configs/mixture25_paper.yaml). The paper does not give the ranges; ours are centred on
its stated values (lr 1e-4, beta1 0.8, init std 0.01, as in that config): lr log-uniform in [1e-5, 1e-3], beta1
uniform in [0.5, 0.9], init std log-uniform in [0.003, 0.1].
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from alitool.atomic import atomic_write_bytes
from alitool.contract.names import CHECKPOINT, RUNS_ROOT
from alitool.errors import UserError

MODELS = ("ali", "gan", "gan-inverse", "gan-posthoc", "vae")
NEEDS_GAN = ("gan-inverse", "gan-posthoc")
DEFAULT_CONFIG = "mixture25"
PAPER_CONFIG = "mixture25_paper"
RESULT = "result.json"
# What an experiment folder holds besides <out>/runs/: the comparison table, every run's metrics, and figure 8.
TABLE, RESULTS, FIGURE = "table.md", "results.json", "figure8.png"


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        what = f"unknown model {bad[0]!r}" if bad else "no model named"
        raise UserError(f"--models {text!r}: {what}; choose from {','.join(MODELS)}")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: comma-separated seeds and inclusive ranges ("0-4", "2", "0,3,5-6"), sorted, each once."""
    seeds: set[int] = set()
    for item in (i.strip() for i in text.split(",")):
        first, dash, last = item.partition("-")
        if not (first.isdigit() and (last.isdigit() or not dash)) or (last and int(last) < int(first)):
            raise UserError(f"--seeds {text!r}: {item!r} is not a seed or a range of seeds (e.g. 0-4, 2, 0,3,5-6)")
        seeds.update(range(int(first), int(last or first) + 1))
    if len(seeds) > 1000:
        raise UserError(f"--seeds {text!r}: {len(seeds)} seeds; at most 1000")
    return tuple(sorted(seeds))


def paper_search_draw(seed: int) -> dict[str, float]:
    """One point of the paper's random search (ranges in the module docstring), a function of the seed."""
    import numpy as np

    rng = np.random.default_rng([2016, seed])
    return {"train.lr": float(10 ** rng.uniform(-5, -3)), "train.beta1": float(rng.uniform(0.5, 0.9)),
            "model.init_std": float(10 ** rng.uniform(math.log10(0.003), -1))}


@dataclass(frozen=True)
class RunSpec:
    model: str
    seed: int
    out: Path
    config: str = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()
    steps: int = 0  # 0: the config's epochs
    threads: int = 1

    @property
    def run_dir(self) -> Path:
        return self.out / RUNS_ROOT / self.model / f"seed-{self.seed}"

    def gan_dir(self) -> Path:
        return self.out / RUNS_ROOT / "gan" / f"seed-{self.seed}"

    def all_overrides(self) -> list[str]:
        values = [f"train.seed={self.seed}", *self.overrides]
        if self.steps:
            values.append(f"train.max_steps={self.steps}")
        return values


def game_factory(spec: RunSpec) -> Callable:
    """The game of ``spec.model`` as a Trainer game factory (cfg, device) -> game."""
    from alitool.trainers import baselines

    if spec.model == "ali":
        return None  # the loop's own default: the ALI game
    if spec.model == "gan":
        return baselines.GANGame
    if spec.model == "vae":
        return baselines.VAEGame
    from alitool.checkpoint import load_checkpoint

    gan_checkpoint = spec.gan_dir() / CHECKPOINT
    if not (spec.gan_dir() / RESULT).is_file():
        raise UserError(f"{spec.model} seed {spec.seed} needs the finished GAN run {spec.gan_dir()} first")
    decoder_state = load_checkpoint(gan_checkpoint)["models"]["decoder"]
    cls = baselines.InverseMappingGame if spec.model == "gan-inverse" else baselines.PostHocGame
    return lambda cfg, device: cls(cfg, device, decoder_state)


def train_and_measure(spec: RunSpec) -> dict:
    """Train one run (or read its finished result) and return its metrics as a dict. Runs in a worker process.

    A run folder with a checkpoint but no result is an interrupted run: it continues from its last checkpoint (the
    loop saves one every epoch, 1,000 steps here) when its settings are the same but for its length, so a longer
    budget can also grow a finished shorter run copied into a new experiment folder. With a constant learning rate
    (the paper's), the continued run is the run trained in one go: the checkpoint keeps the optimiser state and the
    random stream, and the batch order is a function of (seed, epoch)."""
    import torch

    from alitool.config import load_config, with_train
    from alitool.data import load_dataset
    from alitool.experiments.mixture_experiment import draw, load_run_networks, measure
    from alitool.trainers.loop import Trainer

    result_path = spec.run_dir / RESULT
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if (result.get("config"), result.get("overrides")) != (spec.config, spec.all_overrides()):
            raise UserError(f"{spec.run_dir} holds a finished run with other settings ({result.get('config')} "
                            f"{' '.join(result.get('overrides', []))}); use another --out")
        return result
    torch.set_num_threads(spec.threads)  # small MLPs: one thread each, runs side by side
    cfg = with_train(load_config(spec.config, spec.all_overrides()), device="cpu")
    resuming = (spec.run_dir / CHECKPOINT).is_file()
    if resuming:
        check_continuable(spec.run_dir, cfg)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(spec.run_dir / "train.log", "a" if resuming else "w", encoding="utf-8")  # noqa: SIM115
    try:
        trainer = Trainer(cfg, spec.run_dir, game_factory=game_factory(spec),
                          log=lambda msg: print(msg, file=log_file, flush=True),
                          train_data=load_dataset(cfg, "train"), eval_data=load_dataset(cfg, "val"))
        if resuming:
            trainer.resume()
        else:
            trainer.start_fresh()
        first_step = trainer.pos.step
        started, cpu_started = time.perf_counter(), time.process_time()
        pos = trainer.fit()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        log_file.close()
    metrics = measure(draw(load_run_networks(trainer.checkpoint_path))).as_dict()
    result = {"model": spec.model, "seed": spec.seed, "config": spec.config, "overrides": spec.all_overrides(),
              "steps": pos.step, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "load_average": round(os.getloadavg()[0], 2), **metrics}
    if first_step:  # seconds above are this process's; the epochs' own times add up every session's training
        result["continued_from_step"] = first_step
        result["training_seconds_all_sessions"] = round(sum(row.get("seconds", 0.0) for row in trainer.metrics), 1)
        if all("cpu_seconds" in row for row in trainer.metrics):  # epochs trained before it was recorded lack it
            result["cpu_seconds_all_sessions"] = round(sum(row["cpu_seconds"] for row in trainer.metrics), 1)
    atomic_write_bytes(result_path, lambda f: f.write(json.dumps(result, indent=1).encode()))
    return result


# What may differ between an interrupted (or shorter) run and the run that continues it: its length only.
LENGTH_KEYS = ("train.max_steps", "train.epochs")


def check_continuable(run_dir: Path, cfg) -> None:
    """One line, before anything trains, when the checkpoint in ``run_dir`` was trained with other settings than
    ``cfg`` (length aside), or with a learning rate schedule that depends on the length (then continuing is not
    the longer run)."""
    from alitool.checkpoint import load_checkpoint
    from alitool.config import to_dict
    from alitool.trainers.resume import tree_differences

    saved = load_checkpoint(run_dir / CHECKPOINT)["config"]
    differences = tree_differences("", to_dict(saved), to_dict(cfg), skip=LENGTH_KEYS)
    longer = (saved.train.max_steps, saved.train.epochs) != (cfg.train.max_steps, cfg.train.epochs)
    if not differences and longer and cfg.train.lr_schedule != "constant":
        differences = [f"train.lr_schedule {cfg.train.lr_schedule!r} decays over the run's length, which differs"]
    if differences:
        more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
        raise UserError(f"{run_dir} holds an unfinished run with other settings: {'; '.join(differences[:2])}"
                        f"{more}; use another --out")


class StopSignals:
    """SIGTERM to the experiment's own process becomes KeyboardInterrupt, as Ctrl-C is, so that ``run`` stops
    its workers instead of leaving them training with nobody to collect their results. ``terminated`` says
    whether it came: Ctrl-C in a terminal reaches the workers by itself (one process group), SIGTERM does not."""

    def __enter__(self) -> StopSignals:
        self.terminated = False
        self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def _raise(self, _signum, _frame) -> None:
        self.terminated = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def stop_workers(pool: ProcessPoolExecutor, forward_sigterm: bool) -> None:
    """Let the running runs stop (``run`` submits no more runs than there are workers, so none is waiting): a
    worker's training loop, on SIGINT or SIGTERM, saves its checkpoint and ends (the same command continues it).
    ``forward_sigterm``: send it to them. Waits for them; one still running after two minutes is killed, and its
    run continues from its previous checkpoint (at most one epoch, 1,000 steps, earlier)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # no public API lists them; shutdown
    pool.shutdown(wait=False, cancel_futures=True)  # forgets them
    if forward_sigterm:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join(timeout=120)
        if worker.is_alive():
            worker.kill()


@dataclass
class Experiment:
    out: Path
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = tuple(range(10))
    steps: int = 0
    jobs: int = 2
    paper_protocol: bool = False
    config: str = ""  # "": mixture25, or mixture25_paper under the paper protocol
    extra_overrides: tuple[str, ...] = ()
    log: Callable[[str], None] = print
    results: dict[str, list[dict]] = field(default_factory=dict)

    def spec(self, model: str, seed: int) -> RunSpec:
        overrides = list(self.extra_overrides)
        if self.paper_protocol:
            overrides = [f"{k}={v}" for k, v in paper_search_draw(seed).items()] + overrides
        return RunSpec(model, seed, self.out, self.config_name, tuple(overrides), self.steps)

    @property
    def config_name(self) -> str:
        return self.config or (PAPER_CONFIG if self.paper_protocol else DEFAULT_CONFIG)

    def run(self) -> dict[str, list[dict]]:
        """Train every (model, seed), ``jobs`` processes at a time; GAN runs first where others need them."""
        wanted = [m for m in MODELS if m in self.models]
        trained = set(wanted) | ({"gan"} if set(wanted) & set(NEEDS_GAN) else set())
        first = [(m, s) for s in self.seeds for m in MODELS if m in trained and m not in NEEDS_GAN]
        self.results = {m: [] for m in wanted}
        if self.jobs == 1:  # in this process, one run after the other (GAN before the runs that need it)
            for model, seed in first + [(m, s) for s in self.seeds for m in NEEDS_GAN if m in trained]:
                self._collect(model, train_and_measure(self.spec(model, seed)))
            return self._sorted()
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
        pending: dict[Future, tuple[str, int]] = {}
        todo = list(first)

        def submit_while_workers_are_free() -> None:
            # not all at once: the pool would queue some runs ahead, and those would start even after a stop
            while todo and len(pending) < self.jobs:
                model, seed = todo.pop(0)
                pending[pool.submit(train_and_measure, self.spec(model, seed))] = (model, seed)

        stop = StopSignals()
        try:
            with stop:
                submit_while_workers_are_free()
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        model, seed = pending.pop(fut)
                        self._collect(model, fut.result())
                        if model == "gan":
                            todo.extend((dependent, seed) for dependent in NEEDS_GAN if dependent in trained)
                    submit_while_workers_are_free()
        except BaseException as exc:  # Ctrl-C reached the workers too; SIGTERM or a failed run did not
            stop_workers(pool, forward_sigterm=stop.terminated or not isinstance(exc, KeyboardInterrupt))
            raise
        pool.shutdown()
        return self._sorted()

    def write_report(self, command: str) -> str:
        """After ``run``: ``TABLE`` (headed by ``command``, the command line that reproduces it), ``RESULTS`` and
        ``FIGURE`` (the first seed of each model, like the paper's figure 8) in ``out``; returns the table."""
        from alitool.experiments.mixture_experiment import draw, load_run_networks, save_figure, summary_table

        table = summary_table(self.results)
        text = f"Command: `{command}`\n\n{table}"
        atomic_write_bytes(self.out / TABLE, lambda f: f.write(text.encode()))
        atomic_write_bytes(self.out / RESULTS, lambda f: f.write(json.dumps(self.results, indent=1).encode()))
        seed = self.seeds[0]
        draws = {m: draw(load_run_networks(self.spec(m, seed).run_dir / CHECKPOINT)) for m in self.models}
        protocol = "the paper's random search, " if self.paper_protocol else ""
        save_figure(self.out / FIGURE, draws,
                    title=f"seed {seed} of each model ({protocol}config {self.config_name})")
        return table

    def _collect(self, model: str, result: dict) -> None:
        self._report(result)
        if model in self.results:
            self.results[model].append(result)

    def _sorted(self) -> dict[str, list[dict]]:
        for runs in self.results.values():
            runs.sort(key=lambda r: r["seed"])
        return self.results

    def _report(self, r: dict) -> None:
        agreement = r["recon_agreement"]
        rec = "" if math.isnan(agreement) else f", reconstruction agreement {100 * agreement:.1f} %"
        held = f" ({r['modes_held']} held)" if "modes_held" in r else ""
        self.log(f"{r['model']:<11} seed {r['seed']}: {r['modes']}/25 modes{held}, "
                 f"{100 * r['high_quality']:.1f} % within 3 std{rec} ({r['steps']} steps, {r['seconds']:.0f} s, "
                 f"{r['cpu_seconds']:.0f} CPU s"
                 + (f" from step {r['continued_from_step']})" if r.get("continued_from_step") else ")"))
