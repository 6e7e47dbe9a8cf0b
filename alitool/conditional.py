"""Conditional ALI (Dumoulin et al. 2017, section 4.4, Eq. 7): what the conditioning vector y is, where it comes
from, and how a user names it on the command line.

y is fully observed: one-hot classes for the labelled datasets (digits, mnist, fashion-mnist, svhn, cifar10,
tinyimagenet) or CelebA's 40 binary attributes as 0/1. Its meaning travels with the model: the config keys
``model.y_kind`` ("class" or "attributes") and ``model.y_names`` (class or attribute names, in y's order) are
filled in from the training data, so the checkpoint, the exported ONNX files and ``ModelMeta`` all say what
each entry of y is, and ``--class`` / ``--attrs`` are checked against them.

How y enters the networks (alitool/models.py, docs/conditional.md): the official code (ali/conditional_bricks.py,
experiments/ali_celeba_conditional.py) embeds y with one linear layer to 256 values and concatenates that
embedding (as 1x1 channels) to the encoder's input of its last layer, to z at the decoder's input, and to the
D(x) and D(z) features at D(x, z)'s input. alitool injects at the same three places, but each network owns its
own embedding, trained with that network's player: the official code shares one embedding among the three and
leaves it out of both players' parameter lists, so it stays at its random initialisation.

No torch here: the ONNX Runtime path uses these helpers without PyTorch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import numpy as np

from alitool.errors import UserError

KINDS = ("class", "attributes")
# The datasets that carry class names or attributes (alitool/data): what `train --conditional` accepts.
LABELLED_DATASETS = ("digits", "mnist", "fashion-mnist", "svhn", "cifar10", "tinyimagenet", "celeba")


@dataclass(frozen=True)
class Condition:
    """What y means: ``kind`` "class" (y is one-hot over ``names``) or "attributes" (y[i] is 0/1 for names[i])."""

    kind: str
    names: tuple[str, ...]

    @property
    def dim(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        what = "classes" if self.kind == "class" else "binary attributes"
        return f"{self.dim} {what}: {_listing(self.names)}"

    # -- y for dataset rows ---------------------------------------------------------------------------------
    def rows(self, ds, index) -> np.ndarray:
        """float32 [n, dim]: the y of dataset ``ds``'s rows ``index`` (an ArrayDataset)."""
        if self.kind == "attributes":
            if ds.attrs is None:
                raise UserError(f"the {ds.name} {ds.split} split has no attributes; this model is conditioned on "
                                f"{self.describe()}")
            return np.ascontiguousarray(ds.attrs[index], dtype=np.float32)
        if ds.y is None:
            raise UserError(f"the {ds.name} {ds.split} split has no labels; this model is conditioned on "
                            f"{self.describe()}")
        return self.one_hot(np.asarray(ds.y[index]))

    def one_hot(self, classes) -> np.ndarray:
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        out = np.zeros((len(classes), self.dim), dtype=np.float32)
        out[np.arange(len(classes)), classes] = 1.0
        return out

    # -- y from the command line ----------------------------------------------------------------------------
    def parse_class(self, text: str) -> int:
        """A class by index ("3") or by name ("Sneaker", any case)."""
        if self.kind != "class":
            raise UserError(f"--class {text}: this model is conditioned on attributes, not classes; use --attrs "
                            f"(valid: {', '.join(self.names)})")
        text = str(text).strip()
        by_name = {n.lower(): i for i, n in enumerate(self.names)}
        if text.lower() in by_name:
            return by_name[text.lower()]
        if text.lstrip("-").isdigit() and 0 <= int(text) < self.dim:
            return int(text)
        raise UserError(f"--class {text}: not one of this model's {self.describe()} (or an index 0..{self.dim - 1})")

    def parse_attrs(self, text: str) -> np.ndarray:
        """``"Male,Smiling,Eyeglasses"`` -> float32 [dim] with those attributes 1 and every other 0."""
        if self.kind != "attributes":
            raise UserError(f"--attrs {text}: this model is conditioned on classes, not attributes; use --class "
                            f"(valid: {_listing(self.names)})")
        y = np.zeros(self.dim, dtype=np.float32)
        by_name = {n.lower(): i for i, n in enumerate(self.names)}
        for name in (part.strip() for part in str(text).split(",")):
            if not name:
                continue
            if name.lower() not in by_name:
                close = difflib.get_close_matches(name, self.names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(f"--attrs: unknown attribute {name!r}; {hint}valid: {', '.join(self.names)}")
            y[by_name[name.lower()]] = 1.0
        return y

    def grid_columns(self, spec: str, base: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
        """(column titles, float32 [columns, dim]) for a figure-7 grid.

        Class models: ``spec`` "all" (or "") is every class; else a comma list of classes. Attribute models: a
        ``;``-separated list of columns, each a comma list of attributes switched on (``"Black_Hair;Blond_Hair;
        Blond_Hair,Bangs"``); a spec without ``;`` is one column per attribute after a first column with none.
        ``base`` (from --attrs) is switched on in every column, as figure 7 holds a row's attributes fixed.
        """
        spec = str(spec).strip()
        if self.kind == "class":
            if spec.lower() in ("", "all", "classes"):
                picked = list(range(self.dim))
            else:
                picked = [self.parse_class(part) for part in spec.split(",") if part.strip()]
            return [self.names[i] for i in picked], self.one_hot(picked)
        base = np.zeros(self.dim, dtype=np.float32) if base is None else base
        if ";" in spec:
            columns = [part.strip() for part in spec.split(";")]
        else:
            columns = [""] + [part.strip() for part in spec.split(",") if part.strip()]
        rows = [np.maximum(base, self.parse_attrs(column)) for column in columns]
        return [column or "(base)" for column in columns], np.stack(rows)


def _listing(names: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def condition_of(model_cfg) -> Condition | None:
    """The Condition a ModelConfig (or a ModelMeta) describes, None for an unconditional model."""
    # A ModelConfig says so with ``conditional``; a ModelMeta (exported files) by carrying y_names.
    if not getattr(model_cfg, "conditional", bool(getattr(model_cfg, "y_names", ()))):
        return None
    kind, names = model_cfg.y_kind, tuple(model_cfg.y_names)
    if kind not in KINDS or not names:
        raise UserError("model.conditional needs model.y_kind (class or attributes) and model.y_names; they are "
                        "filled in from the dataset when training starts")
    return Condition(kind, names)


def dataset_condition(ds) -> Condition:
    """What y is for dataset ``ds`` (an ArrayDataset): its attributes, else its named classes."""
    if ds.attrs is not None and ds.attr_names:
        return Condition("attributes", tuple(ds.attr_names))
    if ds.y is not None and ds.class_names:
        if len(ds.y) and (ds.y.min() < 0 or ds.y.max() >= len(ds.class_names)):
            raise UserError(f"{ds.name} labels run {ds.y.min()}..{ds.y.max()}, outside its "
                            f"{len(ds.class_names)} classes")
        return Condition("class", tuple(ds.class_names))
    raise UserError(f"the {ds.name} dataset has no class labels or attributes to condition on; conditional ALI "
                    f"works with {', '.join(LABELLED_DATASETS)}")


def check_conditional_dataset(name: str) -> None:
    """One line, before any data is read, for a dataset that cannot give y (folder, mixture25)."""
    if name not in LABELLED_DATASETS:
        raise UserError(f"--conditional: the {name} dataset has no class labels or attributes to condition on; "
                        f"conditional ALI works with {', '.join(LABELLED_DATASETS)}")


def conditional_config(cfg, train_data):
    """``cfg`` with model.y_kind and model.y_names filled in from ``train_data``; a config that already names
    them (a resumed run) must agree with the data."""
    found = dataset_condition(train_data)
    m = cfg.model
    if m.y_names and (m.y_kind, tuple(m.y_names)) != (found.kind, found.names):
        raise UserError(f"the config conditions on {m.y_kind} {_listing(tuple(m.y_names))}, but the {train_data.name} "
                        f"data gives {found.describe()}")
    return replace(cfg, model=replace(m, y_kind=found.kind, y_names=found.names))


def broadcast_rows(y: np.ndarray, n: int) -> np.ndarray:
    """One y vector [dim] repeated for a batch of ``n`` rows (float32, contiguous)."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(y, dtype=np.float32), (n, y.shape[-1])))
