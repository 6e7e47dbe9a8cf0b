"""ALI's three networks, built from the paper's layer tables (Dumoulin et al. 2017, section 2 and Appendix A).

- ``Encoder``  G_z(x): x -> (mu, log_sigma); z_hat = mu + exp(log_sigma) * eps (section 3, reparametrisation).
- ``Decoder``  G_x(z): z -> x_tilde in [0, 1] (sigmoid output with a per-pixel bias, official code).
- ``Discriminator`` D(x, z): D(x) and D(z) stacks, concatenated along channels, then D(x, z) -> one logit.

Conditional ALI (section 4.4, Eq. 7; ``model.conditional``): y is linearly embedded (``model.y_embed_dim``, 256 in
the official code) by each network's own ``embed`` layer and concatenated, as channels, to the input of the
encoder's last row, to z at the decoder's input and to the D(x), D(z) features at D(x, z)'s input: the official
code's three injection points (alitool/conditional.py says how it differs). ``model.spectral_norm`` puts spectral
normalisation (Miyato et al. 2018) on every weight of D.

Every network is a ``LayerStack``: one torch module per table row, so the architecture printed by
``print(model)`` reads like the paper's table. Conv tables use NCHW tensors and treat z as a 1x1 image;
linear tables (the 2-D toy experiment) use flat tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from alitool.config import Config, Layer, ModelConfig
from alitool.errors import UserError
from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout


def data_shape(cfg: Config) -> tuple[int, ...]:
    """(C, H, W) for images, (D,) for vector data such as the 2-D mixture (image_size 0)."""
    if cfg.data.image_size > 0:
        return (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    return (cfg.data.channels,)


class Maxout(nn.Module):
    """Max over ``pieces`` consecutive channels (Goodfellow et al. 2013): C channels in, C / pieces out.

    ``max(dim).values`` rather than ``amax(dim)``: the same values, and a gradient that differs only where pieces
    tie exactly (``max`` sends it to one of them, ``amax`` splits it; either is a subgradient). ``max`` is the
    faster kernel on AVX2 and AVX-512 CPUs, most of all on channels_last and bf16 maps: 1.32x the CIFAR-10
    training step in bf16, 1.15x the paper's 2-D step (benchmarks/maxout.py, benchmarks/RESULTS.md).
    """

    def __init__(self, pieces: int):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (-1, self.pieces)).max(dim=2).values


class TableRow(nn.Sequential):
    """One row of a paper table: [dropout on the input] -> conv/deconv/linear -> [batch norm] -> activation."""

    def __init__(self, layer: Layer, in_width: int, model: ModelConfig, bias: bool | None = None):
        parts: dict[str, nn.Module] = {}
        if layer.dropout > 0:
            parts["dropout"] = TableDropout(layer.dropout)
        # Layers followed by batch norm carry no bias (official code): BN's shift replaces it.
        use_bias = (not layer.batch_norm) if bias is None else bias
        if layer.op == "conv":
            parts["conv"] = TableConv2d(in_width, layer.channels, layer.kernel, layer.stride, bias=use_bias)
        elif layer.op == "deconv":
            parts["deconv"] = TableConvTranspose2d(in_width, layer.channels, layer.kernel, layer.stride, bias=use_bias)
        else:
            parts["linear"] = nn.Linear(in_width, layer.channels, bias=use_bias)
        if layer.batch_norm:
            norm = nn.BatchNorm2d if layer.op != "linear" else nn.BatchNorm1d
            parts["bn"] = norm(layer.channels, momentum=model.batch_norm_momentum)
        act = _activation(layer.activation, model)
        if act is not None:
            parts["act"] = act
        super().__init__(OrderedDict(parts))
        self.out_width = layer.channels // (model.maxout_pieces if layer.activation == "maxout" else 1)


def _activation(name: str, model: ModelConfig) -> nn.Module | None:
    if name == "lrelu":
        return nn.LeakyReLU(model.leaky_slope)
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "maxout":
        return Maxout(model.maxout_pieces)
    return None  # "linear"; "sigmoid" outputs are applied by the owner (logits are what the losses need)


class LayerStack(nn.Module):
    """A layer table as modules. Flattens its input before the first linear row of a conv input.

    ``extra_width`` > 0 makes row ``extra_at`` take that many more input channels: ``forward(..., extra=e)``
    concatenates ``e`` [N, extra_width] there (broadcast over the feature map), as conditional ALI does with y's
    embedding.

    Biases: a row without batch norm has one, unless ``biases`` is false (then no row has one: the official
    code's D(z), ``model.disc_z_bias``); ``last_bias``, when given, decides the last row alone.
    """

    def __init__(self, table: tuple[Layer, ...], in_width: int, model: ModelConfig, last_bias: bool | None = None,
                 extra_at: int = 0, extra_width: int = 0, biases: bool = True):
        super().__init__()
        self.extra_at, self.extra_width = extra_at, extra_width
        rows = []
        for i, layer in enumerate(table):
            if extra_width and i == extra_at:
                in_width += extra_width
            row_bias = None if biases else False  # None: TableRow's rule, a bias where there is no batch norm
            if i == len(table) - 1 and last_bias is not None:
                row_bias = last_bias
            row = TableRow(layer, in_width, model, bias=row_bias)
            rows.append(row)
            in_width = row.out_width
        self.rows = nn.ModuleList(rows)
        self.out_width = in_width

    def forward(self, x: Tensor, taps: list[Tensor] | None = None, extra: Tensor | None = None) -> Tensor:
        for i, row in enumerate(self.rows):
            if "linear" in row._modules and x.dim() > 2:
                x = x.flatten(1)
            if extra is not None and i == self.extra_at:
                x = with_condition(x, extra)
            x = row(x)
            if taps is not None:
                taps.append(x)
        return x


def with_condition(h: Tensor, embedding: Tensor) -> Tensor:
    """``h`` ([N, C, H, W] or [N, C]) with ``embedding`` [N, E] appended as E more channels, constant over H, W."""
    if h.dim() > 2:
        embedding = embedding[:, :, None, None].expand(-1, -1, *h.shape[2:])
    return torch.cat([h, embedding.to(h.dtype)], dim=1)


def condition_embedding(m: ModelConfig) -> nn.Linear | None:
    """The linear embedding of y (section 4.4: "linearly embedded"), or None for an unconditional model."""
    if not m.conditional:
        return None
    if not m.y_names:
        raise UserError("model.conditional needs model.y_names (what y means); training fills them in from the "
                        "dataset")
    if m.y_embed_dim < 1:
        raise UserError(f"model.y_embed_dim is {m.y_embed_dim}; it must be at least 1")
    return nn.Linear(len(m.y_names), m.y_embed_dim)


def _embed(net: nn.Module, y: Tensor | None, who: str) -> Tensor | None:
    """``net.embed(y)``, with one clear line when a conditional network is called without y (or vice versa)."""
    if net.embed is None:
        if y is not None:
            raise UserError(f"the {who} is not conditional; it takes no y")
        return None
    if y is None:
        raise UserError(f"this conditional model's {who} needs y ({net.embed.in_features} values per example)")
    return net.embed(y)


def _spatial_size(table: tuple[Layer, ...], size: int) -> int:
    """Feature-map side after the table (no padding anywhere, as in the paper's tables)."""
    for layer in table:
        if layer.op == "conv":
            size = (size - layer.kernel) // layer.stride + 1
        elif layer.op == "deconv":
            size = (size - 1) * layer.stride + layer.kernel
        else:
            size = 1
        if size < 1:
            raise UserError(f"layer {layer} shrinks the feature map below 1x1")
    return size


def _is_conv(table: tuple[Layer, ...]) -> bool:
    return any(layer.op != "linear" for layer in table)


class Encoder(nn.Module):
    """G_z(x) (paper section 2). The last row outputs (mu, log_sigma), 2 * latent_dim channels."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.latent_dim = m.latent_dim
        self.stochastic = m.encoder_output == "gaussian"
        shape = data_shape(cfg)
        in_width = shape[0] if _is_conv(m.encoder) else math.prod(shape)
        if m.encoder_noise_dim and _is_conv(m.encoder):
            raise UserError("model.encoder_noise_dim needs a linear (MLP) encoder table; the conv tables have none")
        self.embed = condition_embedding(m)  # y's embedding joins the input of the last row (official code)
        self.stack = LayerStack(m.encoder, in_width + m.encoder_noise_dim, m, last_bias=True,
                                extra_at=len(m.encoder) - 1, extra_width=m.y_embed_dim if self.embed else 0)
        if m.encoder_noise_dim:
            self.stack = NoiseInput(self.stack, m.encoder_noise_dim)
        expected = m.latent_dim * (2 if self.stochastic else 1)
        if self.stack.out_width != expected:
            raise UserError(
                f"encoder table ends with {self.stack.out_width} channels; expected {expected} "
                f"({'2 x ' if self.stochastic else ''}latent_dim {m.latent_dim})"
            )
        if len(shape) == 3 and _is_conv(m.encoder) and _spatial_size(m.encoder, shape[1]) != 1:
            side = _spatial_size(m.encoder, shape[1])
            raise UserError(f"encoder table maps {shape[1]}x{shape[1]} images to {side}x{side}; expected 1x1")

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(mu, log_sigma), each [N, latent_dim]; log_sigma is None for a deterministic encoder. ``y``: the
        conditioning vectors [N, y_dim] of a conditional model."""
        out = self.stack(x, extra=_embed(self, y, "encoder")).flatten(1)
        if not self.stochastic:
            return out, None
        mu, log_sigma = out.chunk(2, dim=1)
        return mu, log_sigma

    def sample(self, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """z_hat ~ q(z | x) with one independent eps per latent dimension (reparametrisation); an encoder with
        noise inputs draws fresh noise, also in eval mode. ``generator``: draw eps (or the noise) from it instead
        of torch's global generator, e.g. the same eps every epoch for a training figure."""
        if isinstance(self.stack, NoiseInput):
            noise = _standard_normal((x.shape[0], self.stack.noise_dim), x.device, torch.float32, generator)
            return self.stack(x, noise=noise, extra=_embed(self, y, "encoder"))
        return reparametrize(*self(x, y), generator=generator)

    def features(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The paper's L2-SVM feature vector (section 4.3): the encoder output (mu and log_sigma) concatenated
        with its last three hidden layers, each flattened. Its width is ``feature_dim``."""
        taps: list[Tensor] = []
        self.stack(x, taps, extra=_embed(self, y, "encoder"))
        return torch.cat([t.flatten(1) for t in taps[-4:]], dim=1)

    def official_features(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The feature vector of the authors' SVHN SVM script (section 4.3; scripts/preprocess_representations in
        github.com/IshmaelBelghazi/ALI): mu alone, then the last three hidden layers taken BEFORE their activation
        (after batch norm where the row has it), each flattened. docs/evaluation.md compares it with ``features``."""
        stack = self.stack.inner if isinstance(self.stack, NoiseInput) else self.stack
        kept: list[Tensor] = []
        # Hooks rather than a second forward loop, so the rows run exactly as in forward() (flattening, y).
        handles = [row.act.register_forward_pre_hook(lambda _module, args: kept.append(args[0]))
                   if "act" in row._modules else row.register_forward_hook(lambda _m, _a, out: kept.append(out))
                   for row in stack.rows[-4:-1]]
        try:
            mu, _ = self(x, y)
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([mu.flatten(1), *(t.flatten(1) for t in kept)], dim=1)


class NoiseInput(nn.Module):
    """The paper's 2-D encoder (section 4.5): x concatenated with ``noise_dim`` N(0, 1) inputs, then the table.

    Like dropout, the noise is drawn in training mode and is zero in eval mode, so an exported or evaluated
    encoder is a deterministic function of x (its "z_mean" is G_z(x, 0)); ``Encoder.sample`` passes fresh noise
    explicitly to draw from q(z | x) in either mode.
    """

    def __init__(self, stack: LayerStack, noise_dim: int):
        super().__init__()
        self.inner = stack
        self.noise_dim = noise_dim
        self.out_width = stack.out_width

    def forward(self, x: Tensor, taps: list[Tensor] | None = None, noise: Tensor | None = None,
                extra: Tensor | None = None) -> Tensor:
        x = x.flatten(1)
        if noise is None:
            noise = x.new_zeros(x.shape[0], self.noise_dim)
            if self.training:
                noise = torch.randn_like(noise)
        return self.inner(torch.cat([x, noise], dim=1), taps, extra)


def reparametrize(mu: Tensor, log_sigma: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + exp(log_sigma) * eps, eps ~ N(0, I) drawn independently per example and per dimension
    (paper section 3), from ``generator`` when given. A deterministic encoder (log_sigma None) returns mu."""
    if log_sigma is None:
        return mu
    return mu + log_sigma.exp() * _standard_normal(mu.shape, mu.device, mu.dtype, generator)


def _standard_normal(shape: tuple[int, ...] | torch.Size, device: torch.device, dtype: torch.dtype,
                     generator: torch.Generator | None) -> Tensor:
    """N(0, 1) values on ``device``. A ``generator`` draws on its own device and the values are moved there: the
    same seed then gives the same eps on a CPU and on a GPU."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device, dtype)


class Decoder(nn.Module):
    """G_x(z) (paper section 2): z -> x_tilde in [0, 1].

    The output layer has no bias of its own; a per-pixel bias is added to the logits instead, initialised to
    the log-odds of the mean training image (official code; it starts training from the mean image).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.latent_dim = m.latent_dim
        self.shape = data_shape(cfg)
        self.conv = _is_conv(m.decoder)
        self.sigmoid_output = m.decoder[-1].activation == "sigmoid"
        self.embed = condition_embedding(m)  # y's embedding is concatenated to z (official code)
        width = m.latent_dim + (m.y_embed_dim if self.embed else 0)
        self.stack = LayerStack(m.decoder, width, m, last_bias=not self.sigmoid_output)
        out = self.stack.out_width
        expected = self.shape[0] if self.conv else math.prod(self.shape)
        if out != expected:
            raise UserError(f"decoder table ends with {out} channels; expected {expected}")
        if self.conv and len(self.shape) == 3 and _spatial_size(m.decoder, 1) != self.shape[1]:
            side = _spatial_size(m.decoder, 1)
            raise UserError(f"decoder table makes {side}x{side} images; the data is {self.shape[1]}x{self.shape[1]}")
        self.output_bias = nn.Parameter(torch.zeros(self.shape)) if self.sigmoid_output else None

    def logits(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        embedding = _embed(self, y, "decoder")
        if embedding is not None:
            z = with_condition(z, embedding)
        h = self.stack(z[:, :, None, None] if self.conv else z)
        h = h.reshape(h.shape[0], *self.shape)
        return h + self.output_bias if self.output_bias is not None else h

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.logits(z, y)
        return torch.sigmoid(h) if self.sigmoid_output else h

    @torch.no_grad()
    def init_output_bias(self, mean_image: Tensor) -> None:
        """Set the per-pixel bias to logit(mean training image), clamped away from 0 and 1."""
        if self.output_bias is not None:
            p = mean_image.reshape(self.shape).clamp(1e-3, 1 - 1e-3)
            self.output_bias.copy_(torch.log(p) - torch.log1p(-p))


class Discriminator(nn.Module):
    """D(x, z) (paper section 2, Appendix A): D(x) and D(z) stacks, concatenated, then D(x, z).

    Returns logits, not probabilities: the tables say "sigmoid", but the official code feeds logits to
    softplus losses, which is the numerically stable form of the same objective. An empty D(x) or D(z)
    table passes its input through (the 2-D experiment concatenates x and z directly).

    Biases follow the official code: a row has one where it has no batch norm, except D(z)'s rows under
    ``model.disc_z_bias: false`` (the official SVHN, CIFAR10 and CelebA scripts).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        shape = data_shape(cfg)
        x_width = shape[0] if _is_conv(m.disc_x) else math.prod(shape)
        self.x_stack = LayerStack(m.disc_x, x_width, m)
        self.z_stack = LayerStack(m.disc_z, m.latent_dim, m, biases=m.disc_z_bias)
        self.conv = _is_conv(m.disc_x) or _is_conv(m.disc_z) or _is_conv(m.disc_xz)
        self.embed = condition_embedding(m)  # y's embedding joins D(x, z)'s input (official code)
        joint_width = self.x_stack.out_width + self.z_stack.out_width + (m.y_embed_dim if self.embed else 0)
        self.xz_stack = LayerStack(m.disc_xz, joint_width, m, last_bias=True)
        self.out_width = self.xz_stack.out_width
        # BigBiGAN's unary scores s_x and s_z (Donahue & Simonyan 2019), read off D(x)'s and D(z)'s features.
        self.unary = m.disc_unary
        if self.unary:
            if self.out_width != 1:
                raise UserError("model.disc_unary needs a single-logit D(x, z) (its last row has 1 channel)")
            if not m.disc_x or not m.disc_z:
                raise UserError("model.disc_unary needs D(x) and D(z) tables to read the unary scores from")
            self.x_score = nn.Linear(self.x_stack.out_width, 1)
            self.z_score = nn.Linear(self.z_stack.out_width, 1)
        if len(shape) == 3 and _is_conv(m.disc_x) and _spatial_size(m.disc_x, shape[1]) != 1:
            side = _spatial_size(m.disc_x, shape[1])
            raise UserError(f"D(x) table maps {shape[1]}x{shape[1]} images to {side}x{side}; expected 1x1")

    def forward(self, x: Tensor, z: Tensor, y: Tensor | None = None,
                terms: bool = False) -> Tensor | tuple[Tensor, ...]:
        """Logits: [N] for the ALI game, [N, K+1] for a multi-logit head. With unary scores, their sum
        s_xz + s_x + s_z (BigBiGAN's total score). ``terms=True`` returns the score terms for the loss:
        (s_xz,) or, with model.disc_unary, (s_xz, s_x, s_z). ``y``: a conditional model's y [N, y_dim]; it
        enters the joint score only (the unary scores see x alone and z alone)."""
        hx = self.x_stack(x)
        hz = self.z_stack(z[:, :, None, None] if self.conv else z)
        if self.conv:
            hx = hx.reshape(hx.shape[0], -1, 1, 1)
            hz = hz.reshape(hz.shape[0], -1, 1, 1)
        else:
            hx, hz = hx.flatten(1), hz.flatten(1)
        joint = torch.cat([hx, hz], dim=1)
        embedding = _embed(self, y, "discriminator")
        if embedding is not None:
            joint = with_condition(joint, embedding)
        out = self.xz_stack(joint).flatten(1)
        joint = out.squeeze(1) if out.shape[1] == 1 else out
        if not self.unary:
            return (joint,) if terms else joint
        scores = (joint, self.x_score(hx.flatten(1)).squeeze(1), self.z_score(hz.flatten(1)).squeeze(1))
        return scores if terms else scores[0] + scores[1] + scores[2]


class ALI(nn.Module):
    """The three networks together, so that one state dict and one ``.to(device)`` cover them."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        init_weights(self, cfg.model.init_std)
        if cfg.model.spectral_norm:  # after the init: the parametrisation normalises the initial weights
            apply_spectral_norm(self.discriminator)

    def generator_parameters(self) -> list[nn.Parameter]:
        """G_z and G_x: the players that minimise the generator loss (paper Eq. 4)."""
        return list(self.encoder.parameters()) + list(self.decoder.parameters())


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear weight of ``module``: each weight is
    divided by its largest singular value, estimated by one power iteration per training forward pass."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(m)


def init_weights(module: nn.Module, std: float) -> None:
    """N(0, std) weights and zero biases (official code); batch norm starts as the identity.

    ``std`` 0 keeps PyTorch's default initialisation (uniform weights and biases scaled by fan-in). The small
    MLPs of the 2-D experiment need it: with zero biases and no batch norm a ReLU net is positively homogeneous,
    G(a z) = a G(z), and its samples start as rays through the origin.
    """
    if std == 0:
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def feature_dim(cfg: Config) -> int:
    """Width of ``Encoder.features`` for this config (documented per config in the README)."""
    enc = Encoder(cfg).eval()
    y = torch.zeros(2, len(cfg.model.y_names)) if enc.embed is not None else None
    with torch.no_grad():
        return enc.features(torch.zeros(2, *data_shape(cfg)), y).shape[1]
