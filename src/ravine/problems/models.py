"""Model builders for the learning tasks: MLPs, CNNs, linear and deep linear networks.

A model is described by one typed :class:`ModelConfig` and built by :func:`build_model` for a
given input shape and number of outputs. Initialization is delegated to :func:`ravine.init.apply`
with the gain of the configured activation, so every model starts from a documented variance.

For vectorized random restarts, :func:`stack_models` stacks N independent copies into
``(N, ...)`` tensors and :func:`make_functional` gives a pure function of them that runs under
:func:`torch.func.vmap`, batch-norm running statistics included.

Example:
    >>> import torch
    >>> from ravine.problems.models import PRESETS, build_model, count_parameters
    >>> model = build_model(PRESETS["mnist1d_cnn"], (40,), 10, generator=0)
    >>> model(torch.zeros(8, 40)).shape
    torch.Size([8, 10])
    >>> count_parameters(model)
    5210
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ravine import init as _init
from ravine import limits
from ravine.init import LoadRecord

__all__ = [
    "ACTIVATIONS",
    "MODEL_KINDS",
    "PRESETS",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "make_functional",
    "model_size",
    "pre_initialize",
    "stack_models",
]

MODEL_KINDS: tuple[str, ...] = ("mlp", "cnn", "linear", "deep_linear")
"""Values of :attr:`ModelConfig.kind`."""

# activation name -> (module factory, the ravine.init nonlinearity whose gain matches it)
_ACTIVATIONS: dict[str, tuple[Callable[[float], nn.Module], str]] = {
    "relu": (lambda slope: nn.ReLU(), "relu"),
    "tanh": (lambda slope: nn.Tanh(), "tanh"),
    "sigmoid": (lambda slope: nn.Sigmoid(), "sigmoid"),
    "gelu": (lambda slope: nn.GELU(), "gelu"),
    "leaky_relu": (lambda slope: nn.LeakyReLU(slope), "leaky_relu"),
    "identity": (lambda slope: nn.Identity(), "linear"),
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
"""Values of :attr:`ModelConfig.activation`."""

_POOLINGS = ("none", "max", "avg")
_READOUTS = ("flatten", "global_avg")

IntOrPerLayer = int | tuple[int, ...]

# spatial dims -> (conv, batch norm, pooling by name, global average pooling)
_CONV_LAYERS = {
    1: (
        nn.Conv1d,
        nn.BatchNorm1d,
        {"max": nn.MaxPool1d, "avg": nn.AvgPool1d},
        nn.AdaptiveAvgPool1d,
    ),
    2: (
        nn.Conv2d,
        nn.BatchNorm2d,
        {"max": nn.MaxPool2d, "avg": nn.AvgPool2d},
        nn.AdaptiveAvgPool2d,
    ),
}


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_choice(arg: str, value: object, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {arg} {value!r}; valid: {', '.join(valid)}")


def _check_int(
    arg: str, value: object, *, minimum: int, maximum: int = limits.MAX_WIDTH, shown: object = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        shown = value if shown is None else shown
        raise ValueError(f"{arg} must be an int >= {minimum}; got {arg}={shown!r}")
    if value > maximum:
        shown = value if shown is None else shown
        raise ValueError(f"{arg} must be an int <= {maximum:,}; got {arg}={shown!r}")


def _check_real(arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{arg} must be a finite number; got {arg}={value!r}")


def _check_per_layer(arg: str, value: object, n: int, *, minimum: int) -> None:
    if isinstance(value, tuple):
        if len(value) != n:
            raise ValueError(
                f"{arg} needs one value per conv layer ({n}, from channels); got {arg}={value!r}"
            )
        for v in value:
            _check_int(arg, v, minimum=minimum, shown=value)
    else:
        _check_int(arg, value, minimum=minimum)


def _per_layer(value: IntOrPerLayer, n: int) -> list[int]:
    return list(value) if isinstance(value, tuple) else [value] * n


def _check_input_shape(input_shape: object, kind: str) -> tuple[int, ...]:
    shape = (input_shape,) if isinstance(input_shape, int) else input_shape
    if (
        not isinstance(shape, Sequence)
        or not shape
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= limits.MAX_INT
            for d in shape
        )
    ):
        raise ValueError(
            f"input_shape must be a non-empty sequence of positive ints; got "
            f"input_shape={input_shape!r}"
        )
    if kind == "cnn" and len(shape) > 3:
        raise ValueError(
            f'kind="cnn" takes input_shape (features,), (C, L) or (C, H, W); got '
            f"input_shape={tuple(shape)!r}"
        )
    return tuple(shape)


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(
        f"generator must be a torch.Generator, an int seed or None; got {type(generator).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything :func:`build_model` needs besides the input shape and number of outputs.

    Kinds:

    - ``"mlp"``: flatten -> ``depth`` x (Linear(width) -> [BatchNorm1d] -> act -> [Dropout])
      -> Linear head.
    - ``"cnn"``: one block per entry of ``channels``, conv -> [BatchNorm] -> act -> [pool] ->
      [Dropout], then ``readout`` (flatten, or global average pooling), then ``depth`` fully
      connected hidden blocks as in the MLP (0: the head sits on the conv features), then the
      Linear head. 1-D convolutions for inputs shaped ``(features,)`` (seen as one channel) or
      ``(C, L)``; 2-D for ``(C, H, W)``.
    - ``"linear"``: flatten -> Linear head (linear / logistic regression). ``depth``, ``width``,
      ``activation``, ``batch_norm`` and ``dropout`` are not used.
    - ``"deep_linear"``: the MLP with no activation at all (a product of ``depth + 1``
      matrices, Saxe et al. 2014); ``activation`` is not used and the init gain is linear.

    Initialization: ``ravine.init.apply(model, init, bias=bias_init, nonlinearity=<gain of
    activation>)`` on the whole model. Following He et al. (2015), one gain serves every layer:
    the gain compensates for the activation that feeds a layer, which is every layer but the
    first, and the paper uses it for the first too since one layer's factor does not matter.
    Batch-norm layers start at the identity with fresh running statistics.

    Instances are frozen (safe to share, e.g. in :data:`PRESETS`); derive variants with
    :func:`dataclasses.replace`. Every field is validated on construction.
    """

    kind: str = "mlp"  # one of MODEL_KINDS
    depth: int = 2  # hidden fully connected layers (for "cnn": after the conv blocks)
    width: int = 100  # units per hidden fully connected layer
    activation: str = "relu"  # one of ACTIVATIONS; also selects the init gain
    negative_slope: float = 0.01  # slope of "leaky_relu" for negative inputs (and its gain)
    init: str = "he_normal"  # a ravine.init.SCHEMES name; "default" keeps torch's init
    bias_init: str = "zeros"  # a ravine.init.BIAS_STRATEGIES name; "default" keeps torch's
    bias_value: float | None = None  # the constant for bias_init "constant"/"small_positive"
    bias: bool = True  # Linear and conv layers have a bias
    batch_norm: bool = False  # BatchNorm after each hidden Linear / conv, before the activation
    dropout: float = 0.0  # drop probability after each hidden block's activation, in [0, 1)
    # CNN only -----------------------------------------------------------------------------
    channels: tuple[int, ...] = (16, 32)  # output channels per conv layer (number of layers)
    kernel_size: IntOrPerLayer = 3  # one for all conv layers, or one per layer
    stride: IntOrPerLayer = 1  # conv stride, one for all or one per layer
    padding: IntOrPerLayer | None = None  # zero padding; None: kernel_size // 2 ("same" at s=1)
    pooling: str = "max"  # after each conv block: "none", "max" or "avg" (kernel 2, stride 2)
    readout: str = "flatten"  # conv features -> vector: "flatten" or "global_avg" pooling

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, MODEL_KINDS)
        _check_int("depth", self.depth, minimum=0, maximum=limits.MAX_DEPTH)
        _check_int("width", self.width, minimum=1)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, tuple(_init.SCHEMES))
        _check_choice("bias_init", self.bias_init, tuple(_init.BIAS_STRATEGIES))
        for name in ("bias", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool; got {name}={getattr(self, name)!r}")
        _check_real("negative_slope", self.negative_slope)
        _check_real("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got dropout={self.dropout!r}")
        # Lists (e.g. from TOML) become tuples so that the frozen config stays hashable.
        for name in ("channels", "kernel_size", "stride", "padding"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ValueError(
                f"channels must be a non-empty tuple of ints; got channels={self.channels!r}"
            )
        if len(self.channels) > limits.MAX_DEPTH:
            raise ValueError(
                f"channels may list at most {limits.MAX_DEPTH:,} conv layers; "
                f"got {len(self.channels):,}"
            )
        for c in self.channels:
            _check_int("channels", c, minimum=1, shown=self.channels)
        _check_per_layer("kernel_size", self.kernel_size, len(self.channels), minimum=1)
        _check_per_layer("stride", self.stride, len(self.channels), minimum=1)
        if self.padding is not None:
            _check_per_layer("padding", self.padding, len(self.channels), minimum=0)
        _check_choice("pooling", self.pooling, _POOLINGS)
        _check_choice("readout", self.readout, _READOUTS)
        # bias_value's rules (required for "constant", > 0 for "small_positive", else None)
        # belong to ravine.init: a dry run on a parameterless module checks them there.
        _init.apply(
            nn.Identity(),
            self.init,
            self.bias_init,
            nonlinearity=self.nonlinearity,
            negative_slope=self.negative_slope,
            bias_value=self.bias_value,
        )

    @property
    def nonlinearity(self) -> str:
        """The :data:`ravine.init.NONLINEARITIES` name whose gain the init uses."""
        if self.kind in ("linear", "deep_linear"):
            return "linear"
        return _ACTIVATIONS[self.activation][1]


PRESETS: dict[str, ModelConfig] = {
    # Greydanus (2020), MNIST-1D reference MLP: 40 -> 100 -> 100 -> 10, ReLU, torch's default
    # init. 15,210 parameters. (MLPBase in the repository's notebooks/models.py also adds a
    # skip connection, h + relu(W2 h), around the second hidden layer; this preset is the
    # plain stack, with the same parameters.)
    "mnist1d_mlp": ModelConfig(
        kind="mlp", depth=2, width=100, activation="relu", init="default", bias_init="default"
    ),
    # Greydanus (2020), MNIST-1D reference CNN (ConvBase in the mnist1d repository): three
    # Conv1d layers of 25 channels, kernels 5, 3, 3, all stride 2, padding 1, ReLU, no pooling;
    # the 25 x 5 features of a 40-long input are flattened into a Linear head. 5,210 parameters.
    "mnist1d_cnn": ModelConfig(
        kind="cnn",
        depth=0,
        activation="relu",
        init="default",
        bias_init="default",
        channels=(25, 25, 25),
        kernel_size=(5, 3, 3),
        stride=2,
        padding=1,
        pooling="none",
        readout="flatten",
    ),
    # Greydanus (2020), MNIST-1D logistic-regression baseline: 40 -> 10, 410 parameters.
    "mnist1d_linear": ModelConfig(kind="linear", init="default", bias_init="default"),
    # sklearn digits (64 features): 64 -> 128 -> 10, ReLU, He normal, zero biases.
    # 9,610 parameters.
    "digits_mlp": ModelConfig(kind="mlp", depth=1, width=128, activation="relu"),
    # sklearn digits viewed as (1, 8, 8): two 3x3 conv blocks (16, 32 channels) with 2x2 max
    # pooling (8 -> 4 -> 2), flatten 32 x 2 x 2 -> 10. He normal, zero biases. 6,090 params.
    "digits_cnn": ModelConfig(kind="cnn", depth=0, channels=(16, 32), kernel_size=3, pooling="max"),
    # Deep linear network (Saxe et al. 2014): 3 hidden layers of 64, no biases, orthogonal
    # init (every layer's singular values are 1). Parameters depend on the input and output
    # sizes: 64 * (d_in + 2 * 64 + d_out).
    "deep_linear": ModelConfig(
        kind="deep_linear", depth=3, width=64, bias=False, init="orthogonal", bias_init="default"
    ),
}
"""Named model configurations; build with ``build_model(PRESETS[name], input_shape, k)``.

Parameter counts below are for the input shape shown and ``k = 10`` outputs.

==============  ==========================================================  =====================
name            architecture                                                parameters
==============  ==========================================================  =====================
mnist1d_mlp     MNIST-1D reference MLP: 2 x 100 ReLU, torch's default init  15,210 on (40,)
mnist1d_cnn     MNIST-1D reference CNN: 3 x Conv1d(25), flatten, linear     5,210 on (40,)
mnist1d_linear  MNIST-1D logistic regression                                410 on (40,)
digits_mlp      64 -> 128 -> 10, ReLU, He normal                            9,610 on (64,)
digits_cnn      Conv2d(16), Conv2d(32), 3x3, max pool 2, flatten, linear    6,090 on (1, 8, 8)
deep_linear     3 x 64 linear layers, no bias, orthogonal                   11,392 on (40,)
==============  ==========================================================  =====================

The MNIST-1D architectures follow Greydanus, "Scaling Down Deep Learning" (2020) and the
``ConvBase`` / ``MLPBase`` / ``LinearBase`` models of github.com/greydanus/mnist1d, with
torch's default initialization as there; replace ``init`` to study other schemes.
"""


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_model(
    config: ModelConfig,
    input_shape: int | Sequence[int],
    num_outputs: int,
    *,
    generator: torch.Generator | int | None = None,
) -> nn.Sequential:
    """Build and initialize the model ``config`` describes, for inputs ``(batch, *input_shape)``.

    The model maps ``(batch, *input_shape)`` to ``(batch, num_outputs)`` (logits, or
    regression outputs). Submodules are named so that state-dict keys read like the
    architecture: ``conv0.conv.weight``, ``conv0.norm.running_mean``, ``hidden1.linear.bias``,
    ``head.weight``.

    Args:
        config: the architecture and its initialization.
        input_shape: shape of one example: ``(features,)`` (an int is accepted), ``(C, L)`` or
            ``(C, H, W)``. MLP-like kinds flatten any shape; a CNN treats ``(features,)`` as
            ``(1, features)`` and uses 1-D convolutions for it and ``(C, L)``, 2-D for
            ``(C, H, W)``.
        num_outputs: size of the head's output.
        generator: a ``torch.Generator`` or an int seed. The same seed gives the same model,
            whichever ``init`` (torch's own default init included), and the global RNG is
            neither consumed nor reseeded. ``None``: draw from the global RNG, like torch.

    Returns:
        An ``nn.Sequential`` in training mode.

    Raises:
        ValueError: a bad ``input_shape`` (not positive ints; more than 3 dimensions for a
            CNN; a spatial size that the convolutions and pooling shrink to nothing) or
            ``num_outputs``.
        TypeError: ``config`` is not a :class:`ModelConfig`.

    Example:
        >>> import torch
        >>> from ravine.problems.models import ModelConfig, build_model
        >>> cfg = ModelConfig(kind="mlp", depth=2, width=32, activation="tanh",
        ...                   init="xavier_normal", batch_norm=True, dropout=0.1)
        >>> model = build_model(cfg, (64,), 10, generator=0)
        >>> [name for name, _ in model.named_children()]
        ['flatten', 'hidden0', 'hidden1', 'head']
        >>> [type(layer).__name__ for layer in model.hidden0]
        ['Linear', 'BatchNorm1d', 'Tanh', 'Dropout']
        >>> model(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig; got {type(config).__name__}")
    shape = _check_input_shape(input_shape, config.kind)
    _check_int("num_outputs", num_outputs, minimum=1, maximum=limits.MAX_INT)
    if generator is None:
        model = _construct(config, shape, num_outputs)
    else:
        generator = _as_generator(generator)
        # torch's layers draw their default init from the global CPU RNG while they are
        # constructed. Seed it from `generator` inside fork_rng, so that "default" init is
        # reproducible too and the caller's global RNG state is restored untouched.
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA RNG untouched
            model = _construct(config, shape, num_outputs)
    _init.apply(
        model,
        config.init,
        config.bias_init,
        nonlinearity=config.nonlinearity,
        negative_slope=config.negative_slope,
        bias_value=config.bias_value,
        generator=generator,
    )
    return model


def _construct(config: ModelConfig, shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if config.kind == "cnn":
        features = _add_conv_blocks(layers, config, shape)
    else:
        layers["flatten"] = nn.Flatten()
        features = math.prod(shape)
    if config.kind != "linear":
        for i in range(config.depth):
            block: OrderedDict[str, nn.Module] = OrderedDict()
            block["linear"] = nn.Linear(features, config.width, bias=config.bias)
            if config.batch_norm:
                block["norm"] = nn.BatchNorm1d(config.width)
            if config.kind != "deep_linear":
                block["act"] = _activation(config)
            if config.dropout > 0:
                block["dropout"] = nn.Dropout(config.dropout)
            layers[f"hidden{i}"] = nn.Sequential(block)
            features = config.width
    layers["head"] = nn.Linear(features, num_outputs, bias=config.bias)
    return nn.Sequential(layers)


def _add_conv_blocks(
    layers: OrderedDict[str, nn.Module], config: ModelConfig, shape: tuple[int, ...]
) -> int:
    """Append the conv blocks and readout; return the number of features they produce."""
    if len(shape) == 1:
        layers["unsqueeze"] = nn.Unflatten(1, (1, shape[0]))  # (B, L) -> (B, 1, L)
        shape = (1, shape[0])
    conv_cls, norm_cls, pools, global_pool = _CONV_LAYERS[len(shape) - 1]
    n = len(config.channels)
    kernels = _per_layer(config.kernel_size, n)
    strides = _per_layer(config.stride, n)
    paddings = (
        [k // 2 for k in kernels] if config.padding is None else _per_layer(config.padding, n)
    )
    in_channels, spatial = shape[0], list(shape[1:])
    for i, (out_channels, k, s, p) in enumerate(
        zip(config.channels, kernels, strides, paddings, strict=True)
    ):
        spatial = [(size + 2 * p - k) // s + 1 for size in spatial]
        if config.pooling != "none":
            spatial = [size // 2 for size in spatial]
        if min(spatial) < 1:
            raise ValueError(
                f"input_shape={shape} is too small for the conv stack: spatial size "
                f"{spatial} after conv layer {i} (kernel_size={k}, stride={s}, padding={p}, "
                f"pooling={config.pooling!r})"
            )
        block: OrderedDict[str, nn.Module] = OrderedDict()
        block["conv"] = conv_cls(in_channels, out_channels, k, s, p, bias=config.bias)
        if config.batch_norm:
            block["norm"] = norm_cls(out_channels)
        block["act"] = _activation(config)
        if config.pooling != "none":
            block["pool"] = pools[config.pooling](2)
        if config.dropout > 0:
            block["dropout"] = nn.Dropout(config.dropout)
        layers[f"conv{i}"] = nn.Sequential(block)
        in_channels = out_channels
    if config.readout == "global_avg":
        layers["readout"] = nn.Sequential(global_pool(1), nn.Flatten())
        return in_channels
    layers["readout"] = nn.Flatten()
    return in_channels * math.prod(spatial)


def _activation(config: ModelConfig) -> nn.Module:
    return _ACTIVATIONS[config.activation][0](config.negative_slope)


@dataclass(frozen=True)
class ModelSize:
    """What :func:`model_size` works out without building the model."""

    parameters: int  # scalar parameters, as count_parameters(build_model(...)) counts them
    activations: int  # values the layers output per example (what backward keeps, roughly)


def model_size(
    config: ModelConfig, input_shape: int | Sequence[int], num_outputs: int
) -> ModelSize:
    """Parameters and per-example activations of ``build_model(config, input_shape,
    num_outputs)``, counted from the config in microseconds and without memory, so that a
    model too large to build is refused before it is built (Python integers: no overflow).

    Raises ValueError as :func:`build_model` does (a bad shape, convolutions that shrink the
    input to nothing).

    Example:
        >>> from ravine.problems.models import PRESETS, model_size
        >>> model_size(PRESETS["mnist1d_cnn"], (40,), 10).parameters
        5210
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig; got {type(config).__name__}")
    shape = _check_input_shape(input_shape, config.kind)
    _check_int("num_outputs", num_outputs, minimum=1, maximum=limits.MAX_INT)
    bias, norm = int(config.bias), int(config.batch_norm)
    # Outputs a block keeps per unit: linear/conv, then norm, activation, dropout, pooling.
    kept = 2 + norm + int(config.dropout > 0)
    parameters, activations = 0, math.prod(shape)
    if config.kind == "cnn":
        if len(shape) == 1:
            shape = (1, shape[0])
        n = len(config.channels)
        kernels, strides = _per_layer(config.kernel_size, n), _per_layer(config.stride, n)
        paddings = (
            [k // 2 for k in kernels] if config.padding is None else _per_layer(config.padding, n)
        )
        in_channels, spatial = shape[0], list(shape[1:])
        for i, (out_channels, k, s, p) in enumerate(
            zip(config.channels, kernels, strides, paddings, strict=True)
        ):
            spatial = [(size + 2 * p - k) // s + 1 for size in spatial]
            units = out_channels * math.prod(spatial) if min(spatial) >= 1 else 0
            if config.pooling != "none":
                spatial = [size // 2 for size in spatial]
            if min(spatial) < 1:
                raise ValueError(
                    f"input_shape={shape} is too small for the conv stack: spatial size "
                    f"{spatial} after conv layer {i} (kernel_size={k}, stride={s}, padding={p}, "
                    f"pooling={config.pooling!r})"
                )
            parameters += in_channels * out_channels * k ** len(spatial) + bias * out_channels
            parameters += 2 * norm * out_channels
            activations += kept * units
            in_channels = out_channels
        features = (
            in_channels if config.readout == "global_avg" else in_channels * math.prod(spatial)
        )
    else:
        features = math.prod(shape)
    if config.kind != "linear" and config.depth:
        width = config.width
        per_block = width * (bias + 2 * norm)
        parameters += (
            features * width + per_block + (config.depth - 1) * (width * width + per_block)
        )
        activations += config.depth * kept * width
        features = width
    parameters += features * num_outputs + bias * num_outputs
    activations += num_outputs
    return ModelSize(parameters, activations)


# --------------------------------------------------------------------------------------------
# Checkpoints and sizes
# --------------------------------------------------------------------------------------------


def pre_initialize(
    model: nn.Module,
    source: str | os.PathLike | nn.Module | Mapping,
    *,
    strict: bool = True,
    strip_prefix: str = "",
    add_prefix: str = "",
) -> LoadRecord:
    """Start ``model`` from trained weights: :func:`ravine.init.load_pretrained`, strict by default.

    ``source`` may be a file path, an ``nn.Module``, a state dict, or a ravine run checkpoint
    (a dict whose ``"model"`` entry is the state dict) — in memory or saved with
    ``torch.save``; ``load_pretrained`` reads all of them. With ``strict=True`` (the default
    here, since a model built from the same config should match exactly) any mismatch raises
    ``ValueError`` and leaves the model unchanged; ``strict=False`` loads what matches and the
    returned :class:`~ravine.init.LoadRecord` lists the rest.

    Example:
        >>> import torch
        >>> from ravine.problems.models import PRESETS, build_model, pre_initialize
        >>> trained = build_model(PRESETS["digits_mlp"], (64,), 10, generator=0)
        >>> fresh = build_model(PRESETS["digits_mlp"], (64,), 10, generator=1)
        >>> record = pre_initialize(fresh, {"model": trained.state_dict(), "step": 100})
        >>> record.complete, torch.equal(fresh.head.weight, trained.head.weight)
        (True, True)
    """
    return _init.load_pretrained(
        model, source, strict=strict, strip_prefix=strip_prefix, add_prefix=add_prefix
    )


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (a tied parameter counts once).

    Args:
        model: the module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Functional view for vectorized restarts
# --------------------------------------------------------------------------------------------


def stack_models(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Stack the parameters and buffers of N same-architecture models along a new dim 0.

    Returns:
        ``(params, buffers)``: ``{name: Tensor (N, *shape)}`` each, in ``named_parameters()``
        / ``named_buffers()`` order. They are detached copies (``requires_grad=False``):
        differentiate with :func:`torch.func.grad`, or call ``requires_grad_()`` on them for
        autograd. BatchNorm's ``num_batches_tracked`` stacks to shape ``(N,)``.

    Raises:
        ValueError: an empty sequence, or models whose parameter/buffer names, shapes or
            dtypes differ (the message names the first difference).

    Example:
        >>> from ravine.problems.models import PRESETS, build_model, stack_models
        >>> copies = [build_model(PRESETS["digits_mlp"], (64,), 10, generator=s) for s in range(4)]
        >>> params, buffers = stack_models(copies)
        >>> params["hidden0.linear.weight"].shape
        torch.Size([4, 128, 64])
    """
    models = list(models)
    if not models:
        raise ValueError("stack_models needs at least one model; got an empty sequence")
    stacked = []
    for kind in ("parameters", "buffers"):
        per_model = [dict(getattr(m, f"named_{kind}")()) for m in models]
        reference = per_model[0]
        for i, named in enumerate(per_model[1:], start=1):
            if list(named) != list(reference):
                raise ValueError(
                    f"models[{i}] has {kind} {sorted(set(named) ^ set(reference))} that "
                    f"models[0] has not (or in another order); stack copies of one architecture"
                )
            for name, t in named.items():
                ref = reference[name]
                if t.shape != ref.shape or t.dtype != ref.dtype:
                    raise ValueError(
                        f"models[{i}].{name} is {tuple(t.shape)} {t.dtype}; models[0] has "
                        f"{tuple(ref.shape)} {ref.dtype}"
                    )
        stacked.append(
            {name: torch.stack([named[name].detach() for named in per_model]) for name in reference}
        )
    return stacked[0], stacked[1]


def make_functional(
    model: nn.Module,
) -> Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Tensor], tuple[Tensor, dict]]:
    """Return a pure function ``f(params, buffers, x) -> (out, new_buffers)`` running ``model``.

    ``model`` serves as the architecture only: ``f`` runs it through
    :func:`torch.func.functional_call` with ``params`` and ``buffers`` in place of its own
    (which it never reads or changes), in whichever mode (``model.train()`` / ``.eval()``) the
    model is in when ``f`` is called. Over stacked copies from :func:`stack_models`::

        f = make_functional(model)
        out, buffers = torch.func.vmap(f, in_dims=(0, 0, None), randomness="different")(
            params, buffers, x  # x: (batch, ...) shared, or in_dims=0 for (N, batch, ...)
        )  # out: (N, batch, num_outputs)

    BatchNorm under vmap — the design choice. In training mode BatchNorm updates its running
    mean/variance in place. ``torch.func.replace_all_batch_norm_modules_`` avoids that by
    deleting the running statistics, which would lose each restart's eval-mode statistics.
    Instead ``f`` gives ``functional_call`` fresh *clones* of the buffers: under ``vmap`` the
    clones are batched like the input, so BatchNorm's in-place update is a batched update of a
    batched tensor — which vmap supports — and each restart's statistics evolve exactly as in
    its own eager forward. The updated clones are returned; the caller's ``buffers`` are never
    mutated, so ``f`` stays pure (safe under ``torch.func.grad``, which also handles the
    in-place update of a clone). No custom batch-norm implementation is needed.

    Requirements under ``vmap``: ``buffers`` must be stacked (``in_dims`` 0), not shared — a
    shared running mean cannot absorb N batched updates; dropout needs
    ``randomness="different"`` (independent masks per restart) or ``"same"``; and BatchNorm
    with ``momentum=None`` (cumulative average) is unsupported because it reads
    ``num_batches_tracked`` as a Python number (``build_model`` uses momentum 0.1).

    Returns:
        ``f``. In eval mode (or without buffers) ``new_buffers`` holds the given values.

    Example:
        >>> import torch
        >>> from dataclasses import replace
        >>> from ravine.problems.models import (PRESETS, build_model, make_functional,
        ...                                     stack_models)
        >>> cfg = replace(PRESETS["digits_mlp"], batch_norm=True)
        >>> copies = [build_model(cfg, (64,), 10, generator=s) for s in range(3)]
        >>> params, buffers = stack_models(copies)
        >>> f = make_functional(copies[0])
        >>> x = torch.randn(16, 64)
        >>> out, new = torch.func.vmap(f, in_dims=(0, 0, None))(params, buffers, x)
        >>> out.shape, new["hidden0.norm.num_batches_tracked"].tolist()
        (torch.Size([3, 16, 10]), [1, 1, 1])
        >>> torch.allclose(out[2], copies[2](x), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")

    def f(
        params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # Clones take BatchNorm's in-place running-stat updates (see the docstring).
        new_buffers = (
            {name: b.clone() for name, b in buffers.items()} if model.training else dict(buffers)
        )
        out = torch.func.functional_call(model, (dict(params), new_buffers), (x,), strict=True)
        return out, new_buffers

    return f
