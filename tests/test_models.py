import pytest
import torch

from alitool.config import available_configs, load_config
from alitool.errors import UserError
from alitool.models import ALI, Maxout, data_shape, feature_dim

IMAGE_CONFIGS = ["svhn", "cifar10", "celeba", "tinyimagenet", "digits"]


@pytest.mark.parametrize("name", [n for n in available_configs() if n in IMAGE_CONFIGS])
def test_shapes_for_every_paper_config(name):
    cfg = load_config(name)
    model = ALI(cfg).eval()
    x = torch.rand(2, *data_shape(cfg))
    z = torch.randn(2, cfg.model.latent_dim)
    with torch.no_grad():
        mu, log_sigma = model.encoder(x)
        assert mu.shape == log_sigma.shape == (2, cfg.model.latent_dim)
        x_tilde = model.decoder(z)
        assert x_tilde.shape == x.shape
        assert 0.0 <= float(x_tilde.min()) and float(x_tilde.max()) <= 1.0
        assert model.discriminator(x, z).shape == (2,)
        assert model.encoder.features(x).shape == (2, feature_dim(cfg))


def test_cifar10_maxout_halves_d_widths():
    model = ALI(load_config("cifar10"))
    assert model.discriminator.x_stack.out_width == 256 and model.discriminator.z_stack.out_width == 256


def test_maxout():
    x = torch.tensor([[1.0, 5.0, -2.0, -3.0]])[:, :, None, None]
    assert Maxout(2)(x).flatten().tolist() == [5.0, -2.0]


def test_bias_only_where_no_batch_norm(tiny_cfg):
    model = ALI(tiny_cfg)
    for row in model.encoder.stack.rows:
        conv = row.conv
        assert (conv.bias is None) == ("bn" in row._modules)
    assert model.encoder.stack.rows[-1].conv.bias is not None  # the output layer has the only bias


def test_init_is_n0_001_and_zero_bias():
    model = ALI(load_config("svhn"))
    w = model.encoder.stack.rows[1].conv.weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.002 and abs(float(w.mean())) < 0.001
    assert float(model.encoder.stack.rows[-1].conv.bias.detach().abs().sum()) == 0.0


def test_reparametrisation_uses_one_eps_per_dimension(tiny_cfg):
    enc = ALI(tiny_cfg).encoder.eval()
    x = torch.rand(1, *data_shape(tiny_cfg)).repeat(4000, 1, 1, 1)
    with torch.no_grad():
        mu, log_sigma = enc(x)
        z = enc.sample(x)
    eps = (z - mu) / log_sigma.exp()
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05
    # independent across dimensions: the correlation matrix is close to the identity
    corr = torch.corrcoef(eps.T)
    assert float((corr - torch.eye(corr.shape[0])).abs().max()) < 0.1


def test_output_bias_init_gives_the_mean_image(tiny_cfg):
    dec = ALI(tiny_cfg).decoder.eval()
    mean = torch.rand(data_shape(tiny_cfg)) * 0.9 + 0.05
    dec.init_output_bias(mean)
    with torch.no_grad():
        out = dec(torch.zeros(3, tiny_cfg.model.latent_dim))
    # the weights are N(0, 0.01): the output starts close to the mean image
    assert float((out - mean).abs().max()) < 0.02


def test_gradients_reach_every_parameter_and_are_finite(tiny_cfg):
    model = ALI(tiny_cfg)
    x = torch.rand(8, *data_shape(tiny_cfg))
    z = torch.randn(8, tiny_cfg.model.latent_dim)
    out = model.discriminator(x, model.encoder.sample(x)).sum() + model.discriminator(model.decoder(z), z).sum()
    out.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_table_that_does_not_reach_1x1_is_a_clear_error():
    with pytest.raises(UserError, match="expected 1x1"):
        ALI(load_config("digits", ["model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,1,1,32,false,0.0,linear]]"]))
