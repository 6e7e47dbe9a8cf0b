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


@pytest.mark.parametrize(("shape", "pieces", "layout"), [
    ((6, 15), 5, torch.contiguous_format),  # a linear layer's output
    ((4, 10, 5, 3), 2, torch.contiguous_format),
    ((4, 10, 5, 3), 2, torch.channels_last),
    ((4, 6, 1, 1), 2, torch.channels_last),  # a 1x1 map, as CIFAR-10's D(z) and D(x, z)
])
def test_maxout_matches_amax_in_value_and_gradient_away_from_ties(shape, pieces, layout):
    """Maxout's kernel (max over the pieces) against the definition written with amax, on linear outputs,
    channels-first and channels-last maps: the pieces are consecutive channels in every layout."""
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_()
    reference = x.reshape(shape[0], shape[1] // pieces, pieces, *shape[2:]).amax(dim=2)
    got = Maxout(pieces)(x)
    grad = torch.randn(reference.shape)
    assert torch.equal(got, reference)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(reference, x, grad)[0])


def test_maxout_sends_a_tied_gradient_to_one_piece():
    """At an exact tie the whole gradient goes to one of the tied pieces (a subgradient of the max), where amax
    would split it: nothing is lost or doubled."""
    x = torch.tensor([[2.0, 2.0, 1.0, 0.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(Maxout(2)(x), x, torch.tensor([[3.0, 1.0]]))
    assert sorted(grad[0, :2].tolist()) == [0.0, 3.0] and grad[0, 2:].tolist() == [1.0, 0.0]


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


def test_a_checkpoint_saved_before_disc_z_bias_existed_loads_its_discriminator(tiny_cfg, tmp_path):
    """A saved config without ``model.disc_z_bias`` (every run before the key) must rebuild the D it was trained
    with, D(z) biases included, so that resuming and evaluating old runs still load their state dicts."""
    from alitool.checkpoint import load_checkpoint, save_checkpoint
    from alitool.models import Discriminator

    trained = ALI(tiny_cfg).discriminator
    assert trained.z_stack.rows[0].conv.bias is not None
    save_checkpoint(tmp_path / "new.pt", cfg=tiny_cfg, models={"discriminator": trained})
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    del payload["config"]["model"]["disc_z_bias"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    rebuilt = Discriminator(old["config"])
    rebuilt.load_state_dict(old["models"]["discriminator"])  # strict: no missing or unexpected key
    official = Discriminator(load_config("digits", ["model.disc_z_bias=false"]))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        official.load_state_dict(old["models"]["discriminator"])


def test_disc_z_bias_false_removes_the_d_z_biases_only(tiny_cfg):
    from dataclasses import replace

    plain = ALI(tiny_cfg).discriminator
    official = ALI(replace(tiny_cfg, model=replace(tiny_cfg.model, disc_z_bias=False))).discriminator
    assert all(row.conv.bias is None for row in official.z_stack.rows)
    assert any(row.conv.bias is not None for row in plain.z_stack.rows)
    for stack in ("x_stack", "xz_stack"):
        for a, b in zip(getattr(plain, stack).rows, getattr(official, stack).rows, strict=True):
            assert (a.conv.bias is None) == (b.conv.bias is None) == ("bn" in a._modules)


def test_sample_with_a_generator_is_reproducible_and_leaves_the_global_generator_alone(tiny_cfg):
    enc = ALI(tiny_cfg).encoder.eval()
    x = torch.rand(5, *data_shape(tiny_cfg))
    state = torch.get_rng_state()
    with torch.no_grad():
        a = enc.sample(x, generator=torch.Generator().manual_seed(3))
        b = enc.sample(x, generator=torch.Generator().manual_seed(3))
        c = enc.sample(x, generator=torch.Generator().manual_seed(4))
        mu, _ = enc(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, mu)
