from dataclasses import FrozenInstanceError

import pytest

from alitool.config import (
    Layer,
    available_configs,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    to_dict,
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
