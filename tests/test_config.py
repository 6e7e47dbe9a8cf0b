import dataclasses
import re
import typing
from dataclasses import FrozenInstanceError

import pytest

from alitool.config import (
    Config,
    Layer,
    available_configs,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    to_dict,
    with_train,
)
from alitool.errors import UserError


def test_paper_configs_are_all_there():
    assert {"svhn", "cifar10", "celeba", "tinyimagenet", "digits"} <= set(available_configs())


def test_svhn_transcribes_table_4_with_code_corrections():
    cfg = load_config("svhn")
    assert cfg.model.latent_dim == 256 and cfg.train.batch_size == 100
    assert cfg.train.beta2 == 0.999  # not the paper's Blocks-style 1e-3
    assert cfg.model.encoder[0] == Layer("conv", 5, 1, 32, True, 0.0, "lrelu")
    assert cfg.model.encoder[-1].channels == 2 * cfg.model.latent_dim
    assert cfg.model.disc_xz[-1].channels == 1 and cfg.model.disc_xz[-1].activation == "linear"
    assert all(layer.dropout == 0.2 for layer in cfg.model.disc_x + cfg.model.disc_z + cfg.model.disc_xz)


def test_cifar10_uses_two_piece_maxout_in_d():
    cfg = load_config("cifar10")
    assert cfg.model.maxout_pieces == 2 and cfg.model.leaky_slope == 0.1
    assert all(layer.activation == "maxout" for layer in cfg.model.disc_x)


def test_config_is_frozen():
    cfg = load_config("digits")
    with pytest.raises(FrozenInstanceError):
        cfg.train.lr = 1.0


def test_set_overrides_with_type_checking():
    cfg = load_config("digits", ["train.lr=2e-4", "model.latent_dim=8", "train.epochs=3"])
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.model.latent_dim == 8 and cfg.train.epochs == 3
    with pytest.raises(UserError, match="expects int"):
        load_config("digits", ["train.epochs=many"])
    with pytest.raises(UserError, match="expects float"):
        load_config("digits", ["train.lr=fast"])


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(UserError, match="did you mean 'train.lr'"):
        load_config("digits", ["train.lrr=1e-3"])
    with pytest.raises(UserError, match="did you mean 'model'"):
        from_dict({"modle": {}})


def test_unknown_config_name_suggests():
    with pytest.raises(UserError, match="did you mean 'svhn'"):
        load_config("svhm")


def test_bad_layer_row_is_named():
    with pytest.raises(UserError, match=r"model.encoder\[0\].*unknown layer op 'convolution'"):
        load_config("digits", ["model.encoder=[[convolution,3,1,8]]"])


def test_override_values_are_yaml_scalars_not_code():
    assert parse_override("name=__import__('os')") == (["name"], "__import__('os')")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config("celeba", ["train.seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert from_dict(yaml.safe_load(path.read_text())) == cfg
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_yaml_path_config(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train: {epochs: 2}\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.train.epochs == 2
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_a_config_states_only_what_differs_from_its_base(tmp_path):
    mnist, fashion = load_config("mnist"), load_config("fashion_mnist")
    assert (mnist.name, mnist.data.name, fashion.data.name) == ("mnist", "mnist", "fashion-mnist")
    assert mnist.model == fashion.model and mnist.train == fashion.train
    variant = tmp_path / "wider.yaml"
    variant.write_text(f"base: {tmp_path / 'mid.yaml'}\nmodel: {{latent_dim: 48}}\n")
    (tmp_path / "mid.yaml").write_text("base: digits\ntrain: {lr: 5.0e-4}\n")
    cfg = load_config(str(variant))
    assert (cfg.model.latent_dim, cfg.train.lr) == (48, 5e-4)
    assert cfg.model.encoder == load_config("digits").model.encoder  # lists come whole from the base


def test_a_base_that_loops_or_is_missing_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(UserError, match="leads back to itself"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: no_such_config\n")
    with pytest.raises(UserError, match="unknown config 'no_such_config'"):
        load_config(str(tmp_path / "c.yaml"))


# Every enumerated key, a value of each that is allowed, and a typo with the hint it must get.
CHOICE_CASES = [
    ("train.update", "alternating", "alternate", "expected simultaneous or alternating; did you mean 'alternating'?"),
    ("train.precision", "bf16", "fp8", "expected auto, fp32 or bf16; did you mean 'fp32'?"),
    ("model.encoder_output", "deterministic", "gausian",
     "expected gaussian or deterministic; did you mean 'gaussian'?"),
    ("train.lr_schedule", "linear", "linaer", "expected constant or linear; did you mean 'linear'?"),
    ("train.loss", "hinge", "hing", "expected bce or hinge; did you mean 'hinge'?"),
    ("train.alice_norm", "l2", "l3", "expected l1 or l2; did you mean 'l2'?"),
    ("data.crop", "stretch", "centre", "expected center or stretch; did you mean 'center'?"),
    ("model.y_kind", "attributes", "classes", "expected '', class or attributes; did you mean 'class'?"),
    ("train.device", "cuda:1", "gpu", "expected auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize(("key", "good", "bad", "expected"), CHOICE_CASES, ids=[c[0] for c in CHOICE_CASES])
def test_an_enumerated_key_is_checked_when_the_config_loads(key, good, bad, expected):
    section, name = key.split(".")
    assert getattr(getattr(load_config("digits", [f"{key}={good}"]), section), name) == good
    with pytest.raises(UserError) as err:
        load_config("digits", [f"{key}={bad}"])
    assert str(err.value) == f"config key {key!r} is {bad!r}; {expected}"
    # the same check where a config comes back from a checkpoint or a resolved config.yaml
    with pytest.raises(UserError, match=f"config key '{key}' is '{bad}'"):
        from_dict({section: {name: bad}})


def test_device_pattern_admits_only_what_the_loop_understands():
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert load_config("digits", [f"train.device={device}"]).train.device == device
    for device in ("cuda:", "cuda:x", "cpu:0", "CUDA", "cuda1", " cpu"):
        with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
            from_dict({"train": {"device": device}})


def test_cli_flags_are_checked_like_set():
    """``with_train`` is how --device, --epochs ... reach the config: the same checks as --set."""
    cfg = load_config("digits")
    assert with_train(cfg, device="cpu", epochs=3).train.device == "cpu"
    with pytest.raises(UserError, match="config key 'train.device' is 'gpu'"):
        with_train(cfg, device="gpu")
    with pytest.raises(UserError, match="config key 'train.precision' is 'fp16'"):
        with_train(cfg, precision="fp16")
    with pytest.raises(UserError, match="expects int"):
        with_train(cfg, epochs="many")
    with pytest.raises(UserError, match="did you mean 'train.epochs'"):
        with_train(cfg, epoch=3)


def test_every_string_key_is_free_text_or_checked():
    """A new enumerated key must be declared with ``choice`` (alitool/config.py); only these are free text."""
    free = {"name", "description", "data.name", "data.data_dir"}
    unchecked = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif hints[f.name] is str:
                choices, pattern = f.metadata.get("choices"), f.metadata.get("pattern")
                if choices or pattern:  # and the default passes its own check
                    assert f.default in choices if choices else re.fullmatch(pattern, f.default), f.name
                elif prefix + f.name not in free:
                    unchecked.append(prefix + f.name)

    walk(Config, "")
    assert unchecked == []
    assert {c[0] for c in CHOICE_CASES} >= {"train.update", "train.precision", "model.encoder_output", "data.crop"}


def test_every_shipped_config_passes_the_checks():
    for name in available_configs():
        load_config(name)
