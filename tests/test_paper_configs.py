"""The paper configs (configs/svhn.yaml, cifar10.yaml, celeba.yaml, tinyimagenet.yaml) against the paper's
architecture tables, row by row, on the networks the configs build.

``TABLES`` transcribes Appendix A, tables 3-6 of Dumoulin et al. (2017, arXiv 1606.00704) as printed: it is the
spec. Where a config departs from its table, ``DEPARTURES`` names the row, the field, the table's value, the
config's value and why (the official code, or a typo in the table); every other cell must equal the table. The
tables have no bias column: ``BIASES`` is that column as the authors' official scripts build it. A change to any
config row, to the departures or to how a row becomes modules fails here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from alitool.config import load_config
from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout
from alitool.models import ALI, Maxout


@dataclass(frozen=True)
class Row:
    """One printed table row: operation, kernel, stride, feature maps, BN?, dropout, nonlinearity."""

    op: str  # "conv" (Convolution) or "deconv" (Transposed convolution)
    kernel: int
    stride: int
    channels: int
    bn: bool
    dropout: float
    act: str  # "lrelu" (Leaky ReLU), "maxout", "linear", "sigmoid"


def rows(*printed: tuple) -> tuple[Row, ...]:
    return tuple(Row(*r) for r in printed)


BN, NO = True, False
STACKS = ("encoder", "decoder", "disc_x", "disc_z", "disc_xz")

# name -> (hyperparameters, {stack: (the table's input width, rows)}), as printed in the paper.
TABLES = {
    "cifar10": (  # table 3
        {"latent_dim": 64, "batch_size": 100, "epochs": 6475, "leaky_slope": 0.1, "maxout_pieces": 2,
         "lr": 1e-4, "beta1": 0.5, "beta2": 1e-3, "init_std": 0.01},
        {"encoder": (3, rows(("conv", 5, 1, 32, BN, 0.0, "lrelu"), ("conv", 4, 2, 64, BN, 0.0, "lrelu"),
                             ("conv", 4, 1, 128, BN, 0.0, "lrelu"), ("conv", 4, 2, 256, BN, 0.0, "lrelu"),
                             ("conv", 4, 1, 512, BN, 0.0, "lrelu"), ("conv", 1, 1, 512, BN, 0.0, "lrelu"),
                             ("conv", 1, 1, 128, NO, 0.0, "linear"))),
         "decoder": (64, rows(("deconv", 4, 1, 256, BN, 0.0, "lrelu"), ("deconv", 4, 2, 128, BN, 0.0, "lrelu"),
                              ("deconv", 4, 1, 64, BN, 0.0, "lrelu"), ("deconv", 4, 2, 32, BN, 0.0, "lrelu"),
                              ("deconv", 5, 1, 32, BN, 0.0, "lrelu"), ("conv", 1, 1, 32, BN, 0.0, "lrelu"),
                              ("conv", 1, 1, 3, NO, 0.0, "sigmoid"))),
         "disc_x": (3, rows(("conv", 5, 1, 32, NO, 0.2, "maxout"), ("conv", 4, 2, 64, NO, 0.5, "maxout"),
                            ("conv", 4, 1, 128, NO, 0.5, "maxout"), ("conv", 4, 2, 256, NO, 0.5, "maxout"),
                            ("conv", 4, 1, 512, NO, 0.5, "maxout"))),
         "disc_z": (64, rows(("conv", 1, 1, 512, NO, 0.2, "maxout"), ("conv", 1, 1, 512, NO, 0.5, "maxout"))),
         "disc_xz": (1024, rows(("conv", 1, 1, 1024, NO, 0.5, "maxout"), ("conv", 1, 1, 1024, NO, 0.5, "maxout"),
                                ("conv", 1, 1, 1, NO, 0.5, "sigmoid")))},
    ),
    "svhn": (  # table 4
        {"latent_dim": 256, "batch_size": 100, "epochs": 100, "leaky_slope": 0.01, "lr": 1e-4, "beta1": 0.5,
         "beta2": 1e-3, "init_std": 0.01},
        {"encoder": (3, rows(("conv", 5, 1, 32, BN, 0.0, "lrelu"), ("conv", 4, 2, 64, BN, 0.0, "lrelu"),
                             ("conv", 4, 1, 128, BN, 0.0, "lrelu"), ("conv", 4, 2, 256, BN, 0.0, "lrelu"),
                             ("conv", 4, 1, 512, BN, 0.0, "lrelu"), ("conv", 1, 1, 512, BN, 0.0, "lrelu"),
                             ("conv", 1, 1, 512, NO, 0.0, "linear"))),
         "decoder": (256, rows(("deconv", 4, 1, 256, BN, 0.0, "lrelu"), ("deconv", 4, 2, 128, BN, 0.0, "lrelu"),
                               ("deconv", 4, 1, 64, BN, 0.0, "lrelu"), ("deconv", 4, 2, 32, BN, 0.0, "lrelu"),
                               ("deconv", 5, 1, 32, BN, 0.0, "lrelu"), ("conv", 1, 1, 32, BN, 0.0, "lrelu"),
                               ("conv", 1, 1, 3, NO, 0.0, "sigmoid"))),
         "disc_x": (3, rows(("conv", 5, 1, 32, NO, 0.2, "lrelu"), ("conv", 4, 2, 64, BN, 0.2, "lrelu"),
                            ("conv", 4, 1, 128, BN, 0.2, "lrelu"), ("conv", 4, 2, 256, BN, 0.2, "lrelu"),
                            ("conv", 4, 1, 512, BN, 0.2, "lrelu"))),
         "disc_z": (256, rows(("conv", 1, 1, 512, NO, 0.2, "lrelu"), ("conv", 1, 1, 512, NO, 0.2, "lrelu"))),
         "disc_xz": (1024, rows(("conv", 1, 1, 1024, NO, 0.2, "lrelu"), ("conv", 1, 1, 1024, NO, 0.2, "lrelu"),
                                ("conv", 1, 1, 1, NO, 0.2, "sigmoid")))},
    ),
    "celeba": (  # table 5 (no beta2 printed)
        {"latent_dim": 256, "batch_size": 100, "epochs": 123, "leaky_slope": 0.02, "lr": 1e-4, "beta1": 0.5,
         "init_std": 0.01},
        {"encoder": (3, rows(("conv", 2, 1, 64, BN, 0.0, "lrelu"), ("conv", 7, 2, 128, BN, 0.0, "lrelu"),
                             ("conv", 5, 2, 256, BN, 0.0, "lrelu"), ("conv", 7, 2, 256, BN, 0.0, "lrelu"),
                             ("conv", 4, 1, 512, BN, 0.0, "lrelu"), ("conv", 1, 1, 512, NO, 0.0, "linear"))),
         "decoder": (256, rows(("deconv", 4, 1, 512, BN, 0.0, "lrelu"), ("deconv", 7, 2, 256, BN, 0.0, "lrelu"),
                               ("deconv", 5, 2, 256, BN, 0.0, "lrelu"), ("deconv", 7, 2, 128, BN, 0.0, "lrelu"),
                               ("deconv", 2, 1, 64, BN, 0.0, "lrelu"), ("conv", 1, 1, 3, NO, 0.0, "sigmoid"))),
         "disc_x": (3, rows(("conv", 2, 1, 64, BN, 0.0, "lrelu"), ("conv", 7, 2, 128, BN, 0.0, "lrelu"),
                            ("conv", 5, 2, 256, BN, 0.0, "lrelu"), ("conv", 7, 2, 256, BN, 0.0, "lrelu"),
                            ("conv", 4, 1, 512, BN, 0.0, "lrelu"))),
         "disc_z": (512, rows(("conv", 1, 1, 1024, NO, 0.2, "lrelu"), ("conv", 1, 1, 1024, NO, 0.2, "lrelu"))),
         "disc_xz": (1536, rows(("conv", 1, 1, 2048, NO, 0.2, "lrelu"), ("conv", 1, 1, 2048, NO, 0.2, "lrelu"),
                                ("conv", 1, 1, 1, NO, 0.2, "sigmoid")))},
    ),
    "tinyimagenet": (  # table 6
        {"latent_dim": 256, "batch_size": 128, "epochs": 125, "leaky_slope": 0.01, "lr": 1e-4, "beta1": 0.5,
         "beta2": 1e-3, "init_std": 0.01},
        {"encoder": (3, rows(("conv", 4, 2, 64, BN, 0.0, "lrelu"), ("conv", 4, 1, 64, BN, 0.0, "lrelu"),
                             ("conv", 4, 2, 128, BN, 0.0, "lrelu"), ("conv", 4, 1, 128, BN, 0.0, "lrelu"),
                             ("conv", 4, 2, 256, BN, 0.0, "lrelu"), ("conv", 4, 1, 256, BN, 0.0, "lrelu"),
                             ("conv", 1, 1, 2048, BN, 0.0, "lrelu"), ("conv", 1, 1, 2048, BN, 0.0, "lrelu"),
                             ("conv", 1, 1, 512, NO, 0.0, "linear"))),
         "decoder": (256, rows(("conv", 1, 1, 2048, BN, 0.0, "lrelu"), ("conv", 1, 1, 256, BN, 0.0, "lrelu"),
                               ("deconv", 4, 1, 256, BN, 0.0, "lrelu"), ("deconv", 4, 2, 128, BN, 0.0, "lrelu"),
                               ("deconv", 4, 1, 128, BN, 0.0, "lrelu"), ("deconv", 4, 2, 64, BN, 0.0, "lrelu"),
                               ("deconv", 4, 1, 64, BN, 0.0, "lrelu"), ("deconv", 4, 2, 64, BN, 0.0, "lrelu"),
                               ("conv", 1, 1, 3, NO, 0.0, "sigmoid"))),
         "disc_x": (3, rows(("conv", 4, 2, 64, NO, 0.2, "lrelu"), ("conv", 4, 1, 64, BN, 0.2, "lrelu"),
                            ("conv", 4, 2, 128, BN, 0.2, "lrelu"), ("conv", 4, 1, 128, BN, 0.2, "lrelu"),
                            ("conv", 4, 2, 256, BN, 0.2, "lrelu"), ("conv", 4, 1, 256, BN, 0.2, "lrelu"))),
         "disc_z": (256, rows(("conv", 1, 1, 2048, NO, 0.2, "lrelu"), ("conv", 1, 1, 2048, NO, 0.2, "lrelu"))),
         "disc_xz": (2304, rows(("conv", 1, 1, 4096, NO, 0.2, "lrelu"), ("conv", 1, 1, 4096, NO, 0.2, "lrelu"),
                                ("conv", 1, 1, 1, NO, 0.2, "sigmoid")))},
    ),
}

# The bias column the tables lack, from the official scripts: a layer has a bias where it has no batch norm, except
# D(z) in the SVHN, CIFAR10 and CelebA scripts. The decoder's output layer has no conv bias: its per-pixel bias is
# ``Decoder.output_bias`` (checked below).
_NO_BN_BIAS = {"encoder": None, "decoder": None, "disc_x": None, "disc_xz": None}
BIASES = {
    "cifar10": {**_NO_BN_BIAS, "disc_z": (False, False)},
    "svhn": {**_NO_BN_BIAS, "disc_z": (False, False)},
    "celeba": {**_NO_BN_BIAS, "disc_z": (False, False)},
    "tinyimagenet": {**_NO_BN_BIAS, "disc_z": None},
}

# (config, stack, row index or None for the stack's input width, field) -> (table, config, why).
LOGIT = "the table's sigmoid is applied inside the softplus losses: D outputs a logit (official code)"
DEPARTURES = {
    **{(name, "disc_xz", 2, "act"): ("sigmoid", "linear", LOGIT) for name in TABLES},
    ("cifar10", "disc_xz", None, "in"): (1024, 512, "maxout halves the D(x) and D(z) widths (official code)"),
    ("celeba", "disc_x", 0, "bn"): (True, False, "official code: no batch norm on D(x)'s first row"),
    **{("celeba", "disc_x", i, "dropout"): (0.0, 0.2, "official code: dropout 0.2 on every D input")
       for i in range(5)},
    ("celeba", "disc_z", None, "in"): (512, 256, "D(z) takes z (256); 512 is the encoder's output, 2 x 256"),
}
HYPER_DEPARTURES = {
    **{(name, "beta2"): (1e-3, 0.999, "the table's 1e-3 is Blocks' 1 - beta2") for name in TABLES if name != "celeba"},
}


def spec(name: str) -> dict[str, tuple[int, tuple[Row, ...]]]:
    """The table of config ``name`` with its departures applied: what the built networks must be."""
    out = {}
    for stack, (width, table) in TABLES[name][1].items():
        if (name, stack, None, "in") in DEPARTURES:
            width = DEPARTURES[name, stack, None, "in"][1]
        changed = []
        for i, row in enumerate(table):
            values = vars(row).copy()
            for field in values:
                if (name, stack, i, field) in DEPARTURES:
                    values[field] = DEPARTURES[name, stack, i, field][1]
            changed.append(Row(**values))
        out[stack] = (width, tuple(changed))
    return out


@pytest.fixture(scope="module", params=list(TABLES))
def built(request):
    name = request.param
    cfg = load_config(name)
    with torch.no_grad():
        return name, cfg, ALI(cfg)


def stacks(model: ALI) -> dict[str, nn.ModuleList]:
    d = model.discriminator
    return {"encoder": model.encoder.stack.rows, "decoder": model.decoder.stack.rows, "disc_x": d.x_stack.rows,
            "disc_z": d.z_stack.rows, "disc_xz": d.xz_stack.rows}


def read_row(row: nn.Module, stack: str, last: bool, cfg) -> tuple[Row, bool]:
    """(the table row these modules implement, whether the layer has a bias)."""
    parts = row._modules
    conv = parts.get("conv", parts.get("deconv"))
    op = "deconv" if isinstance(conv, TableConvTranspose2d) else "conv"
    assert isinstance(conv, (TableConv2d, TableConvTranspose2d)), conv
    assert conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
    assert conv.padding == (0, 0), "the tables use no padding"
    act = parts.get("act")
    if isinstance(act, nn.LeakyReLU):
        assert act.negative_slope == cfg.model.leaky_slope
        name = "lrelu"
    elif isinstance(act, Maxout):
        assert act.pieces == cfg.model.maxout_pieces
        name = "maxout"
    else:
        assert act is None, act
        name = "sigmoid" if stack == "decoder" and last else "linear"
    dropout = parts["dropout"].p if "dropout" in parts else 0.0
    if "dropout" in parts:
        assert isinstance(parts["dropout"], TableDropout)
    if "bn" in parts:
        assert parts["bn"].momentum == 0.05  # official code
    built_row = Row(op, conv.kernel_size[0], conv.stride[0], conv.out_channels, "bn" in parts, dropout, name)
    return built_row, conv.bias is not None


def test_every_row_matches_its_table_and_its_departures(built):
    name, cfg, model = built
    expected = spec(name)
    for stack, modules in stacks(model).items():
        width, table = expected[stack]
        assert len(modules) == len(table), f"{name} {stack}: {len(modules)} rows, the table has {len(table)}"
        first = modules[0]._modules.get("conv", modules[0]._modules.get("deconv"))
        assert first.in_channels == width, f"{name} {stack}: input width {first.in_channels}, expected {width}"
        for i, (row, want) in enumerate(zip(modules, table, strict=True)):
            got, _ = read_row(row, stack, i == len(table) - 1, cfg)
            assert got == want, f"{name} {stack} row {i + 1}: built {got}, the table (with departures) says {want}"
    assert model.decoder.sigmoid_output


def test_biases_are_the_official_codes(built):
    name, cfg, model = built
    for stack, modules in stacks(model).items():
        rule = BIASES[name][stack]
        for i, row in enumerate(modules):
            row_spec, has_bias = read_row(row, stack, i == len(modules) - 1, cfg)
            if rule is not None:
                want = rule[i]
            elif stack == "decoder" and i == len(modules) - 1:
                want = False  # the per-pixel output bias stands in for it
            else:
                want = not row_spec.bn
            assert has_bias == want, f"{name} {stack} row {i + 1}: bias {has_bias}, the official code {want}"
    assert model.decoder.output_bias is not None and model.decoder.output_bias.shape == (3, *[cfg.data.image_size] * 2)


def test_hyperparameters_match_the_table(built):
    name, cfg, _ = built
    values = {"latent_dim": cfg.model.latent_dim, "batch_size": cfg.train.batch_size, "epochs": cfg.train.epochs,
              "leaky_slope": cfg.model.leaky_slope, "maxout_pieces": cfg.model.maxout_pieces, "lr": cfg.train.lr,
              "beta1": cfg.train.beta1, "beta2": cfg.train.beta2, "init_std": cfg.model.init_std}
    for key, printed in TABLES[name][0].items():
        want = HYPER_DEPARTURES.get((name, key), (printed, printed))[1]
        assert values[key] == pytest.approx(want), f"{name} {key}: {values[key]}, the table says {printed}"
    assert cfg.train.beta2 == 0.999  # table 5 prints no beta2: Adam's default


def test_every_departure_departs_and_is_said_on_its_config_line():
    """A departure entry whose table value equals the config's would hide a stale entry; each departing row's
    line in the YAML must carry a comment saying why (the README promises it)."""
    for (name, stack, index, field), (printed, used, why) in DEPARTURES.items():
        assert printed != used and why
        if index is None:
            assert TABLES[name][1][stack][0] == printed
            continue
        assert getattr(TABLES[name][1][stack][1][index], field) == printed, (name, stack, index, field)
        line = _row_line(name, stack, index)
        assert "#" in line, f"configs/{name}.yaml {stack} row {index + 1} departs from the table without a comment"
        if field == "act":
            assert "logit" in line, line


def _row_line(name: str, stack: str, index: int) -> str:
    from alitool.config import CONFIG_DIR

    lines = (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{stack}:"))
    row_lines = []
    for line in lines[start + 1 :]:
        if line.strip().startswith("- ["):
            row_lines.append(line)
        elif line.strip() and not line.strip().startswith("#"):
            break
    return row_lines[index]


def test_a_changed_row_is_caught():
    """The comparison above is not vacuous: one changed dropout in a config's row is a mismatch."""
    cfg = load_config("tinyimagenet", ["model.disc_x=[[conv,4,2,64,false,0.2,lrelu],[conv,4,1,64,true,0.5,lrelu],"
                                       "[conv,4,2,128,true,0.2,lrelu],[conv,4,1,128,true,0.2,lrelu],"
                                       "[conv,4,2,256,true,0.2,lrelu],[conv,4,1,256,true,0.2,lrelu]]"])
    from alitool.models import Discriminator

    rows_built = Discriminator(cfg).x_stack.rows
    table = spec("tinyimagenet")["disc_x"][1]
    mismatched = [i for i, (row, want) in enumerate(zip(rows_built, table, strict=True))
                  if read_row(row, "disc_x", False, cfg)[0] != want]
    assert mismatched == [1]
