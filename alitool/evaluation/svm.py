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
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alitool.errors import UserError

DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class ProtocolSplits:
    """Indices into the labelled pool: the validation split and one balanced labelled set per repeat."""

    validation: np.ndarray
    labelled_sets: tuple[np.ndarray, ...]

    def needed(self) -> np.ndarray:
        """Every pool index whose features the protocol reads (validation and all labelled sets), sorted."""
        return np.unique(np.concatenate([self.validation, *self.labelled_sets]))


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


def make_splits(labels: np.ndarray, n_labels: int, repeats: int, val_size: int, seed: int) -> ProtocolSplits:
    """The validation split (``val_size`` pool examples, uniformly drawn) and ``repeats`` balanced labelled sets
    of ``n_labels`` examples from the remaining pool, all from generators seeded by ``seed``."""
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
    return ProtocolSplits(validation, sets)


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

    @property
    def mean(self) -> float:
        return float(np.mean(self.test_errors))

    @property
    def std(self) -> float:
        return float(np.std(self.test_errors, ddof=1)) if len(self.test_errors) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "test_error_mean": self.mean, "test_error_std": self.std,
                "test_errors": self.test_errors, "chosen_c": self.chosen_c, "val_errors": self.val_errors,
                "not_converged_fits": self.not_converged, "seconds": self.seconds}


def fit_standardised_svm(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 2000) -> tuple[object, bool]:
    """A squared-hinge LinearSVC on ``x`` standardised by its own mean/std, with the scaling folded back into
    ``coef_`` / ``intercept_`` so the returned model scores raw features. Returns (svm, converged).

    With fewer examples than features (1000 labels x 3,776 paper features) the SVM is fitted in the span of the
    examples instead: w = sum_i a_i x_i for the L2-regularised problem (representer theorem), and liblinear's dual
    solver only ever sees the examples' inner products, which an orthonormal basis Q of that span keeps exactly.
    So fitting on x Q and mapping coef_ back through Q^T is the same SVM (same solver path, same predictions),
    about 4x faster at 1000 x 3,776."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (dead units, border pixels) stay constant
    x = (x - mean) / std
    basis = np.linalg.qr(x.T)[0] if x.shape[0] < x.shape[1] else None  # [features, examples]
    # liblinear's dual solver: with the protocol's small labelled sets it was the faster one at every C tried
    # (1000 Fashion-MNIST examples x 784 pixels, benchmarks/RESULTS.md), whereas "auto" picks the primal for n > d.
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


def evaluate_features(name: str, pool_features: np.ndarray, pool_labels: np.ndarray, test_features: np.ndarray,
                      test_labels: np.ndarray, splits: ProtocolSplits, c_grid: tuple[float, ...] = DEFAULT_C_GRID,
                      progress: Callable[[str], None] | None = None) -> SvmResult:
    """Run the protocol for one feature set. ``pool_features[i]`` belongs to pool example ``splits.needed()[i]``
    (only those rows are ever computed); ``pool_labels`` are the whole pool's labels, indexed like the splits;
    ``test_features`` covers the whole test split."""
    needed = splits.needed()
    if len(pool_features) != len(needed):
        raise ValueError(f"{name}: {len(pool_features)} pool feature rows for {len(needed)} needed examples")
    row = {int(i): r for r, i in enumerate(needed)}
    started = time.perf_counter()
    result = SvmResult(name, int(pool_features.shape[1]))
    val_rows = np.array([row[int(i)] for i in splits.validation])
    x_val, y_val = pool_features[val_rows], pool_labels[splits.validation]
    for r, labelled in enumerate(splits.labelled_sets):
        x_lab = pool_features[np.array([row[int(i)] for i in labelled])]
        y_lab = pool_labels[labelled]
        best = None
        for c in c_grid:
            svm, converged = fit_standardised_svm(x_lab, y_lab, c)
            result.not_converged += not converged
            err = error_rate(svm, x_val, y_val)
            if best is None or err < best[0]:  # strict: ties keep the smaller C (the grid is ascending)
                best = (err, c, svm)
        val_err, c, svm = best
        result.val_errors.append(val_err)
        result.chosen_c.append(c)
        result.test_errors.append(error_rate(svm, test_features, test_labels))
        if progress:
            progress(f"{name}: repeat {r + 1}/{len(splits.labelled_sets)} C={c:g} val {100 * val_err:.2f}% "
                     f"test {100 * result.test_errors[-1]:.2f}%")
    result.seconds = time.perf_counter() - started
    return result


def format_table(results: list[SvmResult], title: str) -> str:
    """A plain-text table: feature set, dimension, test error mean +- std (%), median chosen C."""
    lines = [title, f"{'features':<28} {'dim':>6}  {'test error %':>16}  {'val error %':>11}  {'C (median)':>10}"]
    for res in results:
        lines.append(f"{res.name:<28} {res.dim:>6}  {100 * res.mean:>8.2f} +- {100 * res.std:<5.2f}  "
                     f"{100 * float(np.mean(res.val_errors)):>11.2f}  {float(np.median(res.chosen_c)):>10.3g}")
    return "\n".join(lines)
