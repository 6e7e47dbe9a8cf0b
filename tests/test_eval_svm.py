"""The L2-SVM protocol (paper section 4.3) on tiny real data: balanced labelled sets, a validation split disjoint
from them and from test, C selection, the folded standardisation, and `alitool eval svm` end to end on a tiny
trained model through the PyTorch and ONNX backends; the official script's rule and feature vector
(``--protocol official|both``) beside it."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_DIGITS, trained_like

from alitool.backends import load_backend
from alitool.cli import main
from alitool.config import load_config, with_train
from alitool.data import load_dataset
from alitool.errors import UserError
from alitool.evaluation.features import (
    PcaFeatures,
    check_shapes,
    load_pool_and_test,
    model_features,
    raw_pixel_features,
)
from alitool.evaluation.svm import (
    OFFICIAL_C_GRID,
    SvmResult,
    evaluate_features,
    evaluate_features_official,
    fit_standardised_svm,
    format_table,
    make_splits,
)
from alitool.models import Encoder, data_shape, feature_dim
from alitool.trainers.loop import Trainer


def _labels(per_class=40, classes=5, seed=0):
    return np.repeat(np.arange(classes), per_class)[np.random.default_rng(seed).permutation(per_class * classes)]


def test_splits_are_balanced_disjoint_and_seeded():
    labels = _labels()
    splits = make_splits(labels, n_labels=20, repeats=6, val_size=50, seed=1)
    assert len(splits.validation) == 50 and len(splits.labelled_sets) == 6
    for labelled in splits.labelled_sets:
        assert len(np.unique(labelled)) == 20
        assert np.bincount(labels[labelled], minlength=5).tolist() == [4] * 5  # balanced
        assert not set(labelled) & set(splits.validation)  # validation never trains an SVM
    assert len({tuple(s) for s in splits.labelled_sets}) == 6  # a different set per repeat
    again = make_splits(labels, n_labels=20, repeats=6, val_size=50, seed=1)
    assert np.array_equal(again.validation, splits.validation)
    assert all(np.array_equal(a, b) for a, b in zip(again.labelled_sets, splits.labelled_sets, strict=True))
    other = make_splits(labels, n_labels=20, repeats=6, val_size=50, seed=2)
    assert not np.array_equal(other.validation, splits.validation)
    assert np.array_equal(splits.needed(), np.unique(np.concatenate([splits.validation, *splits.labelled_sets])))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_labels": 21}, "multiple of 5"),
    ({"val_size": 190}, "too few"),
    ({"n_labels": 200, "val_size": 10}, "too few"),
    ({"n_labels": 150, "val_size": 40}, "examples left"),
    ({"repeats": 0}, "must be positive"),
])
def test_impossible_splits_fail_with_one_line(kwargs, message):
    args = {"n_labels": 20, "repeats": 2, "val_size": 50, "seed": 0} | kwargs
    with pytest.raises(UserError, match=message):
        make_splits(_labels(), **args)


def test_pool_and_test_are_different_splits():
    cfg = load_config("digits")
    pool, test = load_pool_and_test(cfg)
    assert (pool.split, test.split) == ("train", "test") and len(pool) + len(test) == 1797
    # digits' test split is a fixed, stratified subset: train and test partition the examples, each in exactly one.
    # Compared as multisets of (image, label), since the data holds a few byte-identical duplicate images.
    from collections import Counter

    def examples(ds):
        return Counter((row.tobytes(), int(label)) for row, label in zip(ds.x, ds.y, strict=True))

    assert examples(load_dataset(cfg, "train")) + examples(test) == examples(load_dataset(cfg, "all"))


def test_standardisation_folded_into_the_weights_matches_a_scaled_pipeline():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7)) * np.array([1, 10, 100, 0.1, 1, 5, 3]) + 50
    x[:, 4] = 2.0  # a constant feature
    y = np.repeat(np.arange(3), 20)
    x[y == 1, 0] += 2
    folded, converged = fit_standardised_svm(x, y, c=0.5)
    reference = make_pipeline(StandardScaler(), LinearSVC(C=0.5, dual=True, max_iter=2000, random_state=0))
    reference.fit(x, y)
    assert converged
    np.testing.assert_allclose(folded.decision_function(x), reference.decision_function(x), rtol=1e-5, atol=1e-6)


def test_fewer_examples_than_features_fits_the_same_svm_in_their_span():
    """n < d: the fit in the span of the examples scores every point like a pipeline on all d features."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 200)) * rng.uniform(0.1, 10, size=200) + rng.normal(size=200)
    y = np.repeat(np.arange(3), 10)
    x[y == 2, :5] += 1.5
    unseen = rng.normal(size=(50, 200)) * 3
    folded, converged = fit_standardised_svm(x, y, c=0.1)
    reference = make_pipeline(StandardScaler(), LinearSVC(C=0.1, dual=True, max_iter=2000, random_state=0))
    reference.fit(x, y)
    assert converged and folded.coef_.shape == (3, 200)
    for points in (x, unseen):  # equal up to the solver's stopping tolerance (scores are of order 1)
        np.testing.assert_allclose(folded.decision_function(points), reference.decision_function(points),
                                   rtol=1e-3, atol=1e-3)
        assert (folded.predict(points) == reference.predict(points)).all()


def _noisy_blobs(n, seed, dims=40):
    """Two classes apart along one axis, buried in ``dims`` - 1 noise dimensions: C matters with 20 labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, dims))
    x[:, 0] += np.where(y == 1, 1.5, -1.5)
    return x, y


def test_c_is_chosen_on_validation_error():
    x, y = _noisy_blobs(300, seed=0)
    x_test, y_test = _noisy_blobs(200, seed=1)
    splits = make_splits(y, n_labels=20, repeats=3, val_size=150, seed=0)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    res = evaluate_features("blobs", x[splits.needed()], y, x_test, y_test, splits, c_grid=grid)
    val, distinct = splits.validation, []
    for r, labelled in enumerate(splits.labelled_sets):
        # the validation error of every C, computed here independently of the protocol code
        models = [fit_standardised_svm(x[labelled], y[labelled], c)[0] for c in grid]
        errors = [float((m.predict(x[val]) != y[val]).mean()) for m in models]
        distinct.append(len(set(errors)))
        best = int(np.argmin(errors))  # the first minimum: ties keep the smaller C
        assert res.chosen_c[r] == grid[best] and res.val_errors[r] == pytest.approx(errors[best])
        assert res.test_errors[r] == pytest.approx(float((models[best].predict(x_test) != y_test).mean()))
    assert max(distinct) > 1  # the grid really disagreed somewhere: the choice was not a formality
    assert 0.0 < np.mean(res.test_errors) < 0.45  # it learned something, imperfectly


def test_c_ties_keep_the_smallest_c():
    x, y = _noisy_blobs(200, seed=2, dims=2)
    x[:, 0] += np.where(y == 1, 20.0, -20.0)  # far apart: every C in the grid is perfect on validation
    splits = make_splits(y, n_labels=20, repeats=2, val_size=100, seed=0)
    res = evaluate_features("far", x[splits.needed()], y, x[:10], y[:10], splits, c_grid=(0.1, 1.0, 10.0))
    assert res.val_errors == [0.0, 0.0] and res.chosen_c == [0.1, 0.1]


def test_result_statistics_and_table():
    res = SvmResult("x", 3, test_errors=[0.1, 0.2, 0.3], chosen_c=[1, 1, 0.1], val_errors=[0.1, 0.1, 0.1])
    assert res.mean == pytest.approx(0.2) and res.std == pytest.approx(0.1)  # sample std over repeats
    table = format_table([res], "title")
    assert "20.00 +- 10.00" in table and table.splitlines()[0] == "title"


# -- the official script's rule (experiments/semi_supervised_svhn.py of the authors' code) ---------------------


def test_official_features_are_mu_and_pre_activation_hidden_layers_of_the_documented_width():
    cfg = load_config("digits")
    encoder = trained_like(cfg).encoder
    x = torch.rand(5, *data_shape(cfg))
    with torch.no_grad():
        official, paper, (mu, _) = encoder.official_features(x), encoder.features(x), encoder(x)
    # docs/evaluation.md: digits = 16 (mu) + 64x4x4 + 128 + 128 (the last three hidden rows) = 1,296
    assert official.shape == (5, 1296) and paper.shape == (5, 1312)
    torch.testing.assert_close(official[:, :16], mu)  # mu alone, no log sigma
    hidden = official[:, 16:]
    # the same rows as the paper vector's hidden part, taken before the leaky ReLU: applying it gives those back
    torch.testing.assert_close(torch.nn.functional.leaky_relu(hidden, cfg.model.leaky_slope), paper[:, :1280])
    assert (hidden < 0).float().mean() > 0.2  # really pre-activation: negatives are not scaled by the slope
    assert not encoder.stack.rows[1].act._forward_pre_hooks  # the hooks are gone afterwards


def test_official_c_is_chosen_once_by_the_closed_form_on_a_separable_problem():
    """1-D, two classes at x = 1 and x = 3, n = 5 per class in each labelled set. With the squared hinge and
    liblinear's regularised bias, the raw-feature SVM is ridge regression on (x, 1) while every margin is below 1,
    and its threshold is t = 4k / (1 + 2k), k = 2Cn: the validation examples are all right once t > 1, i.e.
    C > 1 / (4n) = 0.05, and all called class 1 below. Standardised features would separate at every C (t = 2),
    so the rule would pick the grid's first C."""
    labels = np.repeat([0, 1], 100)
    x = np.where(labels == 1, 3.0, 1.0)[:, None]
    splits = make_splits(labels, n_labels=10, repeats=3, val_size=60, seed=0, selection_set=True)
    assert splits.selection is not None and not set(splits.selection) & set(splits.validation)
    res = evaluate_features_official("line", x[splits.needed()], labels, x[:20], labels[:20], splits)
    expected = min(c for c in OFFICIAL_C_GRID if c > 0.05)
    assert expected == pytest.approx(np.exp(-20 + 21 * 40 / 49))  # the 22nd of exp(linspace(-20, 20, 50))
    assert res.chosen_c == [expected] * 3 and len(res.selection_errors) == 50
    first = OFFICIAL_C_GRID.index(expected)
    share_of_class_0 = float((labels[splits.validation] == 0).mean())
    assert res.selection_errors[:first] == pytest.approx([share_of_class_0] * first)
    assert res.selection_errors[first] == 0.0 and res.val_errors == [0.0] * 3 and res.test_errors == [0.0] * 3


def test_official_repeats_reuse_the_selection_sets_c_even_where_it_is_wrong_for_them():
    """Hand-made splits: the selection set is the problem above (C = 0.0574 separates the validation examples),
    the repeats' sets have the classes swapped (class 0 at x = 3). By the y -> -y symmetry their SVM at that C has
    the same threshold, 1.07, with the sides swapped: every validation example wrong. Choosing C per repeat
    would instead take the smallest C (all one class, about half wrong)."""
    from alitool.evaluation.svm import ProtocolSplits

    labels = np.tile([0, 1], 50)
    x = np.where(labels == 1, 3.0, 1.0)[:, None]
    x[70:] = np.where(labels[70:] == 1, 1.0, 3.0)[:, None]  # the repeats' examples, classes swapped
    splits = ProtocolSplits(validation=np.arange(10, 70), labelled_sets=(np.arange(70, 80), np.arange(80, 90)),
                            selection=np.arange(10))
    res = evaluate_features_official("swapped", x[splits.needed()], labels, x[:10], labels[:10], splits)
    expected = min(c for c in OFFICIAL_C_GRID if c > 0.05)
    assert res.chosen_c == [expected] * 2 and res.val_errors == [1.0, 1.0]


def test_official_rule_matches_an_independent_liblinear_run():
    """On noisy data: C = the first minimum of the selection set's validation errors over the grid, raw features,
    that C for every repeat, each repeat's test error from a plain LinearSVC, and numpy's population std."""
    from sklearn.svm import LinearSVC

    x, y = _noisy_blobs(300, seed=3)
    x_test, y_test = _noisy_blobs(200, seed=4)
    splits = make_splits(y, n_labels=20, repeats=3, val_size=150, seed=0, selection_set=True)
    grid = OFFICIAL_C_GRID[10:40:5]
    res = evaluate_features_official("blobs", x[splits.needed()], y, x_test, y_test, splits, c_grid=grid)

    def plain(rows, c):
        return LinearSVC(C=c, dual=True, max_iter=1000, random_state=0).fit(x[rows], y[rows])

    val = splits.validation
    errors = [float((plain(splits.selection, c).predict(x[val]) != y[val]).mean()) for c in grid]
    assert res.selection_errors == pytest.approx(errors, abs=1 / 150)  # at most one validation example apart
    best = grid[int(np.argmin(res.selection_errors))]
    assert len(set(errors)) > 1 and res.chosen_c == [best] * 3
    expected = [float((plain(s, best).predict(x_test) != y_test).mean()) for s in splits.labelled_sets]
    assert res.test_errors == pytest.approx(expected, abs=1 / 100)
    assert res.ddof == 0 and res.std == pytest.approx(float(np.std(res.test_errors)))
    assert res.to_dict()["protocol"] == "official"


def test_the_selection_set_leaves_the_other_splits_alone():
    labels = _labels()
    plain, with_selection = (make_splits(labels, 20, 4, 50, seed=3, selection_set=flag) for flag in (False, True))
    assert plain.selection is None and np.bincount(labels[with_selection.selection]).tolist() == [4] * 5
    assert np.array_equal(plain.validation, with_selection.validation)
    assert all(np.array_equal(a, b) for a, b in zip(plain.labelled_sets, with_selection.labelled_sets, strict=True))
    with pytest.raises(ValueError, match="selection"):
        evaluate_features_official("x", np.zeros((len(plain.needed()), 2)), labels, np.zeros((1, 2)), labels[:1],
                                   plain)


def test_baseline_features():
    images = (np.arange(2 * 1 * 8 * 8) % 256).astype(np.uint8).reshape(2, 1, 8, 8)
    raw = raw_pixel_features(images)
    assert raw.shape == (2, 64) and raw.max() <= 1.0 and raw[0, 5] == pytest.approx(5 / 255)
    pool = load_dataset(load_config("digits"), "train").x
    pca = PcaFeatures(4, pool)
    out = pca(pool[:10])
    assert out.shape == (10, 4) and np.isfinite(out).all()
    with pytest.raises(UserError, match="not possible"):
        PcaFeatures(65, pool)


# -- end to end -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("svm") / "run"
    trainer = Trainer(with_train(load_config("digits", TINY_DIGITS), max_steps=2), run, log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    return run


ARGS = ["--labels", "50", "--val-size", "200", "--repeats", "2", "--c-grid", "0.01,1", "--quiet"]


def test_eval_svm_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "svm.json"
    result = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    cfg = load_config("digits", TINY_DIGITS)
    assert rows["ALI (paper features)"]["dim"] == feature_dim(cfg)
    assert rows["raw pixels"]["dim"] == 64 and rows["PCA (4 components)"]["dim"] == 4
    for row in rows.values():
        assert len(row["test_errors"]) == 2 and all(0.0 <= e <= 1.0 for e in row["test_errors"])
        assert set(row["chosen_c"]) <= {0.01, 1.0}
    assert report["pool_split"] == "train" and report["test_size"] == 359 and report["labels"] == 50
    assert "ALI (paper features)" in result.output and f"report: {out}" in result.output
    # the default report path sits in the run folder
    default = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS, "--no-baselines", "--features", "mean"])
    assert default.exit_code == 0, default.output
    assert json.loads((tiny_run / "eval" / "svm_digits_mean.json").read_text())["results"][0]["dim"] == 4


def test_eval_svm_both_protocols_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "both.json"
    result = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS, "--protocol", "both", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"] == "both" and report["official_c_grid"] == pytest.approx(list(OFFICIAL_C_GRID))
    rows = {(r["name"], r["protocol"]): r for r in report["results"]}
    names = ("raw pixels", "PCA (4 components)")
    assert set(rows) == {("ALI (paper features)", "alitool"), ("ALI (official script features)", "official"),
                         *((n, p) for n in names for p in ("alitool", "official"))}
    cfg = load_config("digits", TINY_DIGITS)
    official = rows[("ALI (official script features)", "official")]
    # TINY_DIGITS: mu (4) + 8x6x6 + 8x4x4 + 16x1x1 before activation = 436; the paper vector is 440
    assert official["dim"] == 436 == Encoder(cfg).eval().official_features(torch.zeros(1, 1, 8, 8)).shape[1]
    for (_, protocol), row in rows.items():
        assert len(row["test_errors"]) == 2 and all(0.0 <= e <= 1.0 for e in row["test_errors"])
        if protocol == "official":  # one C for every repeat, from the official grid
            assert len(set(row["chosen_c"])) == 1 and row["chosen_c"][0] in report["official_c_grid"]
            assert row["std_ddof"] == 0 and len(row["selection_errors"]) == 50
        else:
            assert set(row["chosen_c"]) <= {0.01, 1.0} and row["std_ddof"] == 1
    assert "official" in result.output and "alitool" in result.output and "C chosen once" in result.output
    # --protocol official alone: its own default report name, the official rows only
    alone = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS, "--protocol", "official", "--no-baselines"])
    assert alone.exit_code == 0, alone.output
    report = json.loads((tiny_run / "eval" / "svm_digits_official.json").read_text())
    assert [(r["name"], r["protocol"]) for r in report["results"]] == [("ALI (official script features)", "official")]
    assert "c_grid" not in report and report["selection_set_size"] == 50
    # the same splits: the alitool row of --protocol both is the alitool-only run's row
    plain = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS, "--no-baselines", "--out",
                                      str(tmp_path / "plain.json")])
    assert plain.exit_code == 0, plain.output
    assert json.loads((tmp_path / "plain.json").read_text())["results"][0]["test_errors"] == \
        rows[("ALI (paper features)", "alitool")]["test_errors"]


def test_eval_svm_official_protocol_needs_the_checkpoint(tiny_run):
    result = CliRunner().invoke(main, ["eval", "svm", str(_encoder_only(tiny_run)), *ARGS, "--protocol", "official"])
    assert result.exit_code == 2 and "needs a PyTorch checkpoint" in result.output
    assert "Traceback" not in result.output


def test_eval_svm_through_onnx_gives_the_checkpoints_features(tiny_run):
    pytest.importorskip("onnxruntime")
    from alitool.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(tiny_run, ExportOptions(exporter="torchscript"), log=lambda _: None)
    images = load_dataset(load_config("digits"), "test").x[:50]
    torch_f = model_features(load_backend(tiny_run / "checkpoint.pt"), images, "paper")
    onnx_f = model_features(load_backend(tiny_run / "export" / "encoder.onnx"), images, "paper")
    np.testing.assert_allclose(onnx_f, torch_f, rtol=1e-4, atol=1e-5)
    result = CliRunner().invoke(main, ["eval", "svm", str(tiny_run / "export" / "encoder.onnx"), *ARGS,
                                       "--no-baselines", "--out", str(tiny_run / "onnx.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tiny_run / "onnx.json").read_text())["backend"] == "onnxruntime"


def test_eval_svm_bad_inputs_are_one_line(tiny_run, tmp_path):
    missing = CliRunner().invoke(main, ["eval", "svm", str(tmp_path / "nope"), *ARGS])
    assert missing.exit_code == 2 and "no such model" in missing.output
    other = tmp_path / "digits16.yaml"
    other.write_text("data: {name: digits, image_size: 16, channels: 1}\n")
    wrong = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), "--dataset", str(other), *ARGS])
    assert wrong.exit_code == 2 and "shape" in wrong.output and "Traceback" not in wrong.output
    with pytest.raises(UserError, match=r"inputs of shape \(1, 8, 8\) but mnist images are \(1, 28, 28\)"):
        check_shapes(np.zeros((2, 1, 28, 28), np.uint8), (1, 8, 8), "model.pt", "mnist")
    grid = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS[:-3], "--c-grid", "a,b"])
    assert grid.exit_code == 2 and "--c-grid" in grid.output


def test_eval_svm_without_the_runtime_is_one_line(tiny_run, monkeypatch):
    """eval svm opens its model as the RUN commands do (``open_model``): a missing runtime is one line, exit 2."""
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    result = CliRunner().invoke(main, ["eval", "svm", str(tiny_run / "checkpoint.pt"), "--backend", "onnx", *ARGS])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs the 'onnxruntime' package" in errors[0], result.output
    assert "Traceback" not in result.output


def test_every_backend_option_offers_the_same_choices():
    from alitool.backends import BACKEND_CHOICES

    commands = {"eval svm": main.commands["eval"].commands["svm"],
                **{name: main.commands[name] for name in ("encode", "reconstruct", "interpolate", "sample")}}
    for name, command in commands.items():
        option = next(p for p in command.params if p.name == "backend")
        assert tuple(option.type.choices) == BACKEND_CHOICES, name
    assert {"onnx", "trt", "onnxruntime", "tensorrt", "torch", "auto"} == set(BACKEND_CHOICES)


def test_open_model_returns_the_backend_and_leaves_printing_to_the_command(tiny_run, capsys):
    from alitool.backends.opening import describe_model, open_model

    loaded = open_model(tiny_run / "checkpoint.pt", "torch", "cpu")
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    assert describe_model(tiny_run / "checkpoint.pt", loaded) == \
        f"model: {tiny_run / 'checkpoint.pt'} (torch, 8x8x1, latent 4)"
    with pytest.raises(UserError, match="has no decoder"):
        open_model(_encoder_only(tiny_run), need_decoder="sample")
    result = CliRunner().invoke(main, ["eval", "svm", str(tiny_run), *ARGS[:-1], "--no-baselines"])
    assert result.exit_code == 0 and f"model: {tiny_run} (" in result.output  # the command prints the one line


def _encoder_only(run):
    """An export folder that holds only the encoder (exported here if the ONNX test has not done it yet)."""
    import shutil

    from alitool.export.pipeline import ExportOptions, export_checkpoint

    pytest.importorskip("onnxruntime")
    export_checkpoint(run, ExportOptions(exporter="torchscript"), log=lambda _: None)
    alone = run / "encoder-only"
    alone.mkdir(exist_ok=True)
    shutil.copy(run / "export" / "encoder.onnx", alone / "encoder.onnx")
    return alone / "encoder.onnx"


def test_seeds_table_averages_runs_on_the_same_splits_and_refuses_others(tiny_run, tmp_path):
    """experiments/seeds_table.py: one row per kind of model, the mean over runs of each run's SVM error on its
    own features (not the baselines' rows of the same report), and no mixing of reports made on other splits."""
    import importlib.util
    import shutil
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("seeds_table", Path(__file__).parents[1] / "experiments" /
                                                  "seeds_table.py")
    seeds_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds_table)
    runs = {}
    for name in ("a-0", "a-1", "base-0", "other-0"):
        runs[name] = tmp_path / name
        (runs[name] / "eval").mkdir(parents=True)
        shutil.copy2(tiny_run / "checkpoint.pt", runs[name] / "checkpoint.pt")
        repeats = "3" if name == "other-0" else "2"
        result = CliRunner().invoke(main, ["eval", "svm", str(runs[name] / "checkpoint.pt"), *ARGS, "--repeats",
                                           repeats, "--out", str(runs[name] / "eval" / "svm_digits_paper.json")])
        assert result.exit_code == 0, result.output
    report = json.loads((runs["a-0"] / "eval" / "svm_digits_paper.json").read_text())
    ours = 100 * next(r for r in report["results"] if r["name"] == "ALI (paper features)")["test_error_mean"]
    pixels = 100 * next(r for r in report["results"] if r["name"] == "raw pixels")["test_error_mean"]
    assert f"{ours:.2f}" != f"{pixels:.2f}"  # the row read must be the model's, which differs here
    text = seeds_table.table({"a": [runs["a-0"], runs["a-1"]], "base": [runs["base-0"]]}, "base")
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert f"| 2 | {ours:.2f}, {ours:.2f} | {ours:.2f} +- 0.00 | +0.00 +- 0.00 |" in row, text
    with pytest.raises(SystemExit, match="repeats differ"):
        seeds_table.table({"a": [runs["a-0"]], "other": [runs["other-0"]]}, None)
