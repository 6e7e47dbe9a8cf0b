"""The paper's L2-SVM protocol for representation quality (Dumoulin et al. 2017, section 4.3, table 1).

What the paper states: 1000 labelled training examples (100 per class), a linear SVM with the squared hinge loss
(scikit-learn's ``LinearSVC``, liblinear), C chosen on a 10,000-example validation split, test error averaged
over 100 SVMs trained on different random 1000-example sets, reported as mean +- std.

What this module fixes where the paper is silent (docs/evaluation.md):
- The validation split is drawn once (seeded) from the labelled pool and is disjoint from every labelled set;
  the labelled sets are drawn from the rest of the pool, balanced (labels / K per class), one per repeat.
  The test split is a separate split of the dataset, never seen before the final error.
- C is chosen per repeat from ``c_grid`` by validation error (ties: the smaller C), then that SVM's test error
  is recorded. The std is the sample standard deviation over repeats.
- Each feature is standardised with the mean and std of the labelled set of that repeat (nothing else is
  looked at); the scaling is folded into the SVM's weights so that validation and test features are never
  copied.
Any feature source works: the protocol only sees arrays (alitool.evaluation.features makes them).

``evaluate_features_official`` runs the authors' own rule instead (experiments/semi_supervised_svhn.py of
github.com/IshmaelBelghazi/ALI) on the same splits: raw, unscaled features; C chosen ONCE, from
``OFFICIAL_C_GRID`` (exp of 50 values evenly spaced in [-20, 20]), by the validation error of an SVM fitted on one
extra balanced labelled set (``ProtocolSplits.selection``); that C is then used for every repeat; the std is the
population std (ddof 0, numpy's default, as the script prints it). docs/evaluation.md lists every departure.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alitool.errors import UserError

DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# The official script's default search: C = exp(t) for 50 values of t evenly spaced in [-20, 20] (natural log).
OFFICIAL_C_GRID = tuple(float(c) for c in np.exp(np.linspace(-20.0, 20.0, 50)))
# sklearn's LinearSVC default, which the official script used (it set no max_iter).
OFFICIAL_MAX_ITER = 1000


@dataclass(frozen=True)
class ProtocolSplits:
    """Indices into the labelled pool: the validation split and one balanced labelled set per repeat."""

    validation: np.ndarray
    labelled_sets: tuple[np.ndarray, ...]
    # The official rule's extra labelled set, on which C is chosen once (None: alitool's protocol alone).
    selection: np.ndarray | None = None

    def needed(self) -> np.ndarray:
        """Every pool index whose features the protocol reads (validation, all labelled sets and the selection
        set), sorted."""
        extra = [] if self.selection is None else [self.selection]
        return np.unique(np.concatenate([self.validation, *self.labelled_sets, *extra]))


def balanced_sample(labels: np.ndarray, candidates: np.ndarray, per_class: int, classes: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class in ``classes``, drawn without replacement from ``candidates``."""
    chosen = []
    for c in classes:
        members = candidates[labels[candidates] == c]
        if len(members) < per_class:
            raise UserError(f"class {c} has {len(members)} examples left for labelled sets; {per_class} are needed "
                            "(lower --labels or --val-size)")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def make_splits(labels: np.ndarray, n_labels: int, repeats: int, val_size: int, seed: int,
                selection_set: bool = False) -> ProtocolSplits:
    """The validation split (``val_size`` pool examples, uniformly drawn) and ``repeats`` balanced labelled sets
    of ``n_labels`` examples from the remaining pool, all from generators seeded by ``seed``. ``selection_set``:
    also draw the official rule's C-selection set, a balanced set like the others from its own generator, so the
    validation split and the repeats' sets are the same with or without it."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n_labels <= 0 or repeats <= 0 or val_size <= 0:
        raise UserError(f"--labels ({n_labels}), --repeats ({repeats}) and --val-size ({val_size}) must be positive")
    if n_labels % len(classes):
        raise UserError(f"--labels {n_labels} does not split evenly over the {len(classes)} classes; use a multiple "
                        f"of {len(classes)}")
    if val_size + n_labels > len(labels):
        raise UserError(f"the labelled pool has {len(labels)} examples: too few for a {val_size}-example validation "
                        f"split plus {n_labels} labelled ones (lower --val-size or --labels)")
    order = np.random.default_rng([seed, 1]).permutation(len(labels))
    validation, rest = np.sort(order[:val_size]), np.sort(order[val_size:])
    per_class = n_labels // len(classes)
    sets = tuple(balanced_sample(labels, rest, per_class, classes, np.random.default_rng([seed, 2, r]))
                 for r in range(repeats))
    selection = (balanced_sample(labels, rest, per_class, classes, np.random.default_rng([seed, 4]))
                 if selection_set else None)
    return ProtocolSplits(validation, sets, selection)


@dataclass
class SvmResult:
    """One feature set under the protocol: per-repeat test errors (fractions), chosen C, validation error."""

    name: str
    dim: int
    test_errors: list[float] = field(default_factory=list)
    chosen_c: list[float] = field(default_factory=list)
    val_errors: list[float] = field(default_factory=list)
    not_converged: int = 0  # liblinear fits that hit max_iter (counted, not hidden)
    seconds: float = 0.0
    protocol: str = "alitool"
    ddof: int = 1  # of the reported std: 1 (sample std) for alitool's protocol, 0 as the official script prints
    selection_errors: list[float] = field(default_factory=list)  # official rule: validation error of each grid C

    @property
    def mean(self) -> float:
        return float(np.mean(self.test_errors))

    @property
    def std(self) -> float:
        return float(np.std(self.test_errors, ddof=self.ddof)) if len(self.test_errors) > self.ddof else 0.0

    def to_dict(self) -> dict:
        out = {"name": self.name, "protocol": self.protocol, "dim": self.dim, "test_error_mean": self.mean,
               "test_error_std": self.std, "std_ddof": self.ddof, "test_errors": self.test_errors,
               "chosen_c": self.chosen_c, "val_errors": self.val_errors, "not_converged_fits": self.not_converged,
               "seconds": self.seconds}
        if self.selection_errors:
            out["selection_errors"] = self.selection_errors
        return out


def fit_standardised_svm(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 2000) -> tuple[object, bool]:
    """A squared-hinge LinearSVC on ``x`` standardised by its own mean/std, with the scaling folded back into
    ``coef_`` / ``intercept_`` so the returned model scores raw features. Returns (svm, converged)."""
    return fit_svm(x, y, c, max_iter, standardise=True)


def fit_svm(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 2000,
            standardise: bool = True) -> tuple[object, bool]:
    """A squared-hinge LinearSVC on ``x`` (standardised by its own mean/std when ``standardise``, the scaling
    folded back into ``coef_`` / ``intercept_`` so the returned model scores raw features). Returns
    (svm, converged).

    With fewer examples than features (1000 labels x 3,776 paper features) the SVM is fitted in the span of the
    examples instead: w = sum_i a_i x_i for the L2-regularised problem (representer theorem), and liblinear's dual
    solver only ever sees the examples' inner products, which an orthonormal basis Q of that span keeps exactly.
    So fitting on x Q and mapping coef_ back through Q^T is the same SVM (same solver path, same predictions),
    about 4x faster at 1000 x 3,776."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x = np.asarray(x, dtype=np.float64)
    if standardise:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std < 1e-8] = 1.0  # constant features (dead units, border pixels) stay constant
    else:  # the official rule: the SVM sees the raw features
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    x = (x - mean) / std
    basis = np.linalg.qr(x.T)[0] if x.shape[0] < x.shape[1] else None  # [features, examples]
    # liblinear's dual solver: with the protocol's small labelled sets it was the faster one at every C tried
    # (1000 Fashion-MNIST examples x 784 pixels, benchmarks/RESULTS.md), whereas "auto" picks the primal for n > d.
    # It is also what the official script ran: dual=True was LinearSVC's only default in 2016.
    svm = LinearSVC(C=c, loss="squared_hinge", dual=True, max_iter=max_iter, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(x if basis is None else x @ basis, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if basis is not None:
        svm.coef_ = svm.coef_ @ basis.T
        svm.n_features_in_ = len(mean)
    svm.coef_ = svm.coef_ / std
    svm.intercept_ = svm.intercept_ - svm.coef_ @ mean
    return svm, converged


def error_rate(svm, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> float:
    wrong = 0
    for start in range(0, len(x), batch):
        wrong += int((svm.predict(np.asarray(x[start : start + batch], dtype=np.float64)) != y[start : start + batch])
                     .sum())
    return wrong / max(len(x), 1)


def _pool_rows(name: str, pool_features: np.ndarray, splits: ProtocolSplits) -> Callable[[np.ndarray], np.ndarray]:
    """Maps pool indices to rows of ``pool_features``, which holds the rows of ``splits.needed()`` only."""
    needed = splits.needed()
    if len(pool_features) != len(needed):
        raise ValueError(f"{name}: {len(pool_features)} pool feature rows for {len(needed)} needed examples")
    row = {int(i): r for r, i in enumerate(needed)}
    return lambda indices: np.array([row[int(i)] for i in indices], dtype=np.int64)


def select_c(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, c_grid: tuple[float, ...],
             fit: Callable[[np.ndarray, np.ndarray, float], tuple[object, bool]],
             ) -> tuple[float, float, object, list[float], int]:
    """The C of ``c_grid`` whose SVM, fitted on (x, y), has the lowest validation error; ties keep the C that
    comes first (the grids are ascending: the smaller C), as the official script's strict ``<`` does.
    Returns (validation error, C, that SVM, the validation error of every C, fits that did not converge)."""
    best, errors, not_converged = None, [], 0
    for c in c_grid:
        svm, converged = fit(x, y, c)
        not_converged += not converged
        errors.append(error_rate(svm, x_val, y_val))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], c, svm)
    return (*best, errors, not_converged)


def evaluate_features(name: str, pool_features: np.ndarray, pool_labels: np.ndarray, test_features: np.ndarray,
                      test_labels: np.ndarray, splits: ProtocolSplits, c_grid: tuple[float, ...] = DEFAULT_C_GRID,
                      progress: Callable[[str], None] | None = None) -> SvmResult:
    """Run alitool's protocol for one feature set: standardised features, C chosen per repeat. ``pool_features[i]``
    belongs to pool example ``splits.needed()[i]`` (only those rows are ever computed); ``pool_labels`` are the
    whole pool's labels, indexed like the splits; ``test_features`` covers the whole test split."""
    rows = _pool_rows(name, pool_features, splits)
    started = time.perf_counter()
    result = SvmResult(name, int(pool_features.shape[1]))
    x_val, y_val = pool_features[rows(splits.validation)], pool_labels[splits.validation]
    for r, labelled in enumerate(splits.labelled_sets):
        x_lab, y_lab = pool_features[rows(labelled)], pool_labels[labelled]
        val_err, c, svm, _, not_converged = select_c(x_lab, y_lab, x_val, y_val, c_grid, fit_standardised_svm)
        result.not_converged += not_converged
        result.val_errors.append(val_err)
        result.chosen_c.append(c)
        result.test_errors.append(error_rate(svm, test_features, test_labels))
        if progress:
            progress(f"{name}: repeat {r + 1}/{len(splits.labelled_sets)} C={c:g} val {100 * val_err:.2f}% "
                     f"test {100 * result.test_errors[-1]:.2f}%")
    result.seconds = time.perf_counter() - started
    return result


def evaluate_features_official(name: str, pool_features: np.ndarray, pool_labels: np.ndarray,
                               test_features: np.ndarray, test_labels: np.ndarray, splits: ProtocolSplits,
                               c_grid: tuple[float, ...] = OFFICIAL_C_GRID,
                               progress: Callable[[str], None] | None = None) -> SvmResult:
    """The official script's rule on alitool's splits (paper section 4.3 as its authors ran it): C chosen once on
    ``splits.selection`` by validation error over ``c_grid``, then one SVM per labelled set with that C, raw
    features (no scaling), liblinear's default 1000 iterations. Each repeat's validation error is recorded too;
    the reported std is numpy's default population std. Arrays are indexed as in ``evaluate_features``."""
    if splits.selection is None:
        raise ValueError("the official rule needs the C-selection set: make_splits(..., selection_set=True)")
    rows = _pool_rows(name, pool_features, splits)

    def fit(x: np.ndarray, y: np.ndarray, c: float) -> tuple[object, bool]:
        return fit_svm(x, y, c, OFFICIAL_MAX_ITER, standardise=False)

    started = time.perf_counter()
    result = SvmResult(name, int(pool_features.shape[1]), protocol="official", ddof=0)
    x_val, y_val = pool_features[rows(splits.validation)], pool_labels[splits.validation]
    x_sel, y_sel = pool_features[rows(splits.selection)], pool_labels[splits.selection]
    val_err, c, _, result.selection_errors, result.not_converged = select_c(x_sel, y_sel, x_val, y_val, c_grid, fit)
    if progress:
        progress(f"{name} (official): C={c:g} chosen once, validation {100 * val_err:.2f}% on the selection set")
    for r, labelled in enumerate(splits.labelled_sets):
        svm, converged = fit(pool_features[rows(labelled)], pool_labels[labelled], c)
        result.not_converged += not converged
        result.chosen_c.append(c)
        result.val_errors.append(error_rate(svm, x_val, y_val))
        result.test_errors.append(error_rate(svm, test_features, test_labels))
        if progress:
            progress(f"{name} (official): repeat {r + 1}/{len(splits.labelled_sets)} C={c:g} "
                     f"val {100 * result.val_errors[-1]:.2f}% test {100 * result.test_errors[-1]:.2f}%")
    result.seconds = time.perf_counter() - started
    return result


def format_table(results: list[SvmResult], title: str) -> str:
    """A plain-text table: feature set, protocol, dimension, test error mean +- std (%), median chosen C."""
    lines = [title, f"{'features':<32} {'protocol':<8} {'dim':>6}  {'test error %':>16}  {'val error %':>11}  "
                    f"{'C (median)':>10}"]
    for res in results:
        lines.append(f"{res.name:<32} {res.protocol:<8} {res.dim:>6}  {100 * res.mean:>8.2f} +- {100 * res.std:<5.2f}  "
                     f"{100 * float(np.mean(res.val_errors)):>11.2f}  {float(np.median(res.chosen_c)):>10.3g}")
    return "\n".join(lines)
