"""DUIIT networks (discriminative unpaired image-to-image translation; the paper and deviations: docs/models.md).

A CycleGAN translator per source modality (MRI, PET or both) into CT, trained jointly with a ResNet
regressor of physiological age on CT. Networks, as the paper takes them from CycleGAN (Zhu et al.):

- ResNet generator: c7s1-w, d2w, d4w, R4w x `g_blocks`, u2w, uw, c7s1-1 (reflection padding,
  instance norm, ReLU; tanh out). w = `g_width` (CycleGAN: 64); 1 channel in and out. CycleGAN uses
  6 residual blocks at 128x128 and 9 at 256x256 and above; `g_blocks: null` picks the same way.
- 70x70 PatchGAN discriminator: C64-C128-C256-C512 (4x4 convolutions, stride 2 but the last,
  instance norm on all but the first, LeakyReLU 0.2), then a 4x4 convolution to one logit per patch.
  `d_width` scales 64; `d_layers` = 3 gives the 70x70 receptive field (`receptive_field` computes it).
- Age regressor P: a torchvision ResNet (the paper uses ResNet-50, its appendix ResNet-18 for PET)
  from scratch, with a 1-channel stem and one regression output (normalised age, see below).

Networks by name, each trained by its own engine:
- `T_{source}`: a `CyclePair`: `to_ct` (the paper's G: source -> CT) and `from_ct` (F: CT -> source).
  CycleGAN steps both generators with one optimiser, so they are one network here.
- `D_{source}`: a `DiscriminatorPair`: `ct` (the paper's D_t, on real CTs vs G's fakes) and `source`
  (D_s, on real source images vs F's fakes); one optimiser for both, as in CycleGAN.
- `P`: the age regressor, shared by all sources (it is the model the translated CTs serve).

Intensities the networks see, in [-1, 1]: CT Hounsfield units clipped to `ct_window` (default the
brain window -20..120 HU, where age shows: CSF, grey and white matter differ by tens of HU; bone and
air saturate as on a brain-window film); MRI/PET as the volume adapter normalises them (divided by
their 99.5th percentile) clipped to `source_range`. Ages: P predicts (age - age_centre) / age_scale
(55 and 20 years: the phantom's 20-90 years map to about [-1.75, 1.75]). All of this is in the model
config, which bundles store, so production converts exactly as training did.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from factory.models.spec import GeneratorSpec, Translation, UntrainedShape

TARGET = "ct"
SOURCES = ("mri", "pet")
PREDICTORS = ("resnet18", "resnet34", "resnet50")
ROLES = ("T", "D", "P")  # translator pairs, discriminator pairs, age predictor

# Architecture, data conventions, then the training hyper-parameters the recipe reads (the paper's
# values where it gives them); the whole dict is stored in bundles.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "sources": list(SOURCES),
    "g_width": 64,
    "g_blocks": None,  # None: 6 up to 128 px, 9 above (CycleGAN)
    "d_width": 64,
    "d_layers": 3,
    "predictor": "resnet18",
    "ct_window": [-20.0, 120.0],  # HU mapped to [-1, 1]
    "source_range": [0.0, 1.0],  # adapter-normalised MRI/PET mapped to [-1, 1]
    "age_centre": 55.0,
    "age_scale": 20.0,
    # training
    "lr": {"T": 2e-4, "D": 2e-4, "P": 1e-3},
    "betas": {"T": [0.5, 0.999], "D": [0.5, 0.999], "P": [0.9, 0.999]},
    "lr_decay_start": 0.5,  # fraction of the steps after which every lr decays linearly towards 0
    "lambda_cyc": 10.0,
    "lambda_pred": 0.001,
    "pool_size": 50,
}


def _positive_int(config: Mapping[str, Any], key: str, minimum: int = 1) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, not {value!r}")


def _number(config: Mapping[str, Any], key: str, low: float | None = None, high: float | None = None,
            strict_low: bool = False) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, not {value!r}")
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"{key} must be {'>' if strict_low else '>='} {low}, not {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{key} must be <= {high}, not {value!r}")


def _interval(config: Mapping[str, Any], key: str) -> list[float]:
    value = config[key]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[0] >= value[1]):
        raise ValueError(f"{key} must be [low, high] with low < high, not {value!r}")
    return [float(v) for v in value]


def _per_role(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config[key]
    if not isinstance(value, Mapping) or set(value) != set(ROLES):
        raise ValueError(f"{key} must give a value for each of {list(ROLES)} (translators, discriminators, "
                         f"predictor), not {value!r}")
    return dict(value)


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError naming the key on an unknown key or an impossible value."""
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown DUIIT config keys: {unknown}")

    sources = config["sources"]
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources:
        raise ValueError(f"sources must be a non-empty list drawn from {list(SOURCES)}, not {sources!r}")
    if TARGET in sources:
        raise ValueError(f"sources must not include {TARGET!r}: CT is the target modality")
    bad = [s for s in sources if s not in SOURCES]
    if bad or len(set(sources)) != len(sources):
        raise ValueError(f"sources must be distinct modalities from {list(SOURCES)}, not {list(sources)!r}")
    config["sources"] = [s for s in SOURCES if s in sources]  # canonical order: names and weights stable

    for key in ("g_width", "d_width", "d_layers"):
        _positive_int(config, key)
    size = config["image_size"]
    _positive_int(config, "image_size", 16)
    if size % 4:
        raise ValueError(f"image_size must be a multiple of 4 (the generator halves it twice), not {size}")
    if config["g_blocks"] is None:
        config["g_blocks"] = 6 if size <= 128 else 9
    _positive_int(config, "g_blocks", 0)
    if patch_grid(size, config["d_layers"]) < 1:
        raise ValueError(f"image_size {size} is too small for a PatchGAN with d_layers={config['d_layers']} "
                         "(no patch left); use a larger image or fewer layers")
    if config["predictor"] not in PREDICTORS:
        raise ValueError(f"predictor must be one of {list(PREDICTORS)}, not {config['predictor']!r}")
    config["ct_window"] = _interval(config, "ct_window")
    config["source_range"] = _interval(config, "source_range")
    _number(config, "age_centre")
    _number(config, "age_scale", 0.0, strict_low=True)

    lr = _per_role(config, "lr")
    for role, value in lr.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"lr.{role} must be a positive number, not {value!r}")
    config["lr"] = {role: float(lr[role]) for role in ROLES}
    betas = _per_role(config, "betas")
    for role, pair in betas.items():
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in pair)):
            raise ValueError(f"betas.{role} must be two numbers in [0, 1), not {pair!r}")
    config["betas"] = {role: [float(b) for b in betas[role]] for role in ROLES}
    _number(config, "lr_decay_start", 0.0, 1.0)
    _number(config, "lambda_cyc", 0.0)
    _number(config, "lambda_pred", 0.0)
    _positive_int(config, "pool_size", 0)
    return config


def role(name: str) -> str:
    """The role of a network name: "T_mri" -> "T", "D_pet" -> "D", "P" -> "P"."""
    head = name.split("_", 1)[0]
    if head not in ROLES:
        raise KeyError(f"not a DUIIT network name: {name!r}")
    return head


def net_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    return (*(f"T_{s}" for s in config["sources"]), *(f"D_{s}" for s in config["sources"]), "P")


# --- translator ------------------------------------------------------------------------------------

def _norm(channels: int) -> nn.Module:
    # CycleGAN's instance norm: no affine parameters, no running statistics (each image on its own).
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    """R: two 3x3 convolutions with reflection padding and instance norm, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-w, d2w, d4w, R4w x blocks, u2w, uw, c7s1-1, tanh: (B, 1, H, W) -> (B, 1, H, W) in [-1, 1]."""

    def __init__(self, width: int, blocks: int, channels: int = 1):
        super().__init__()
        # Convolutions keep their bias: with instance norm without affine parameters CycleGAN does too.
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), _norm(width),
                                   nn.ReLU(inplace=True)]
        for i in range(2):  # d2w, d4w
            c = width * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(4 * width) for _ in range(blocks)]
        for i in range(2):  # u2w, uw: fractionally strided convolutions
            c = width * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(c // 2),
                       nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CyclePair(nn.Module):
    """The two generators of one source modality: `to_ct` (source -> CT) and `from_ct` (CT -> source)."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.to_ct = ResnetGenerator(width, blocks)
        self.from_ct = ResnetGenerator(width, blocks)

    def forward(self, source: torch.Tensor, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both cycles: source -> CT -> source and CT -> source -> CT."""
        fake_ct = self.to_ct(source)
        fake_source = self.from_ct(ct)
        return {"fake_ct": fake_ct, "cycled_source": self.from_ct(fake_ct),
                "fake_source": fake_source, "cycled_ct": self.to_ct(fake_source)}


# --- discriminators --------------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """PatchGAN: C64-C128-C256-C512 (x d_width/64) then a 4x4 convolution to one least-squares logit
    per overlapping patch: (B, 1, H, W) -> (B, 1, h, w)."""

    def __init__(self, width: int, layers: int = 3, channels: int = 1):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        multiple = 1
        for n in range(1, layers + 1):
            previous, multiple = multiple, min(2 ** n, 8)
            stride = 2 if n < layers else 1  # the last C-layer keeps the resolution
            modules += [nn.Conv2d(width * previous, width * multiple, 4, stride=stride, padding=1),
                        _norm(width * multiple), nn.LeakyReLU(0.2, True)]
        modules.append(nn.Conv2d(width * multiple, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiscriminatorPair(nn.Module):
    """The two discriminators of one source modality: `ct` (real CT vs translated) and `source`."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.ct = PatchDiscriminator(width, layers)
        self.source = PatchDiscriminator(width, layers)

    def forward(self, ct: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits of CT images (real or translated) and of source images (real or translated)."""
        return self.ct(ct), self.source(source)


def patch_grid(size: int, layers: int) -> int:
    """Side of a PatchGAN's output for a `size` input (4x4 kernels, padding 1)."""
    for _ in range(layers):
        size = (size + 2 - 4) // 2 + 1
    for _ in range(2):
        size = size + 2 - 4 + 1
    return size


def receptive_field(module: nn.Module) -> int:
    """Receptive field (pixels, per side) of a chain of convolutions, in the order they run.

    r grows by (k - 1) x the product of the earlier strides; pointwise layers leave it alone."""
    field, jump = 1, 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            field += (layer.kernel_size[0] - 1) * layer.dilation[0] * jump
            jump *= layer.stride[0]
    return field


# --- age predictor ---------------------------------------------------------------------------------

def age_regressor(arch: str) -> nn.Module:
    """A torchvision ResNet from scratch with a 1-channel stem and one output (normalised age)."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


class AgePredictor(nn.Module):
    def __init__(self, arch: str):
        super().__init__()
        self.resnet = age_regressor(arch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B,) normalised age."""
        return self.resnet(images)[:, 0]


# --- building ------------------------------------------------------------------------------------

def _cyclegan_init(module: nn.Module) -> None:
    # CycleGAN's "normal" init: N(0, 0.02) weights, zero biases.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    """T_{source} and D_{source} for each source, then P (see the module docstring)."""
    config = make_config(config)
    nets: dict[str, nn.Module] = {}
    for source in config["sources"]:
        nets[f"T_{source}"] = CyclePair(config["g_width"], config["g_blocks"])
    for source in config["sources"]:
        nets[f"D_{source}"] = DiscriminatorPair(config["d_width"], config["d_layers"])
    for net in nets.values():
        net.apply(_cyclegan_init)
    nets["P"] = AgePredictor(config["predictor"])
    return nets


# --- conversions and inference -------------------------------------------------------------------

def _to_unit(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (values.clamp(low, high) - low) / (high - low) * 2 - 1


def to_model_space(images: torch.Tensor, modality: str, config: Mapping[str, Any]) -> torch.Tensor:
    """Adapter units (CT: HU; MRI/PET: normalised by the 99.5th percentile) -> [-1, 1]."""
    low, high = config["ct_window"] if modality == TARGET else config["source_range"]
    return _to_unit(images.float(), low, high)


def ct_to_hounsfield(images: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """[-1, 1] CT (a translation or a real one) -> Hounsfield units within the window."""
    low, high = config["ct_window"]
    return (images.float().clamp(-1, 1) + 1) / 2 * (high - low) + low


def normalise_age(years: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    return (years - config["age_centre"]) / config["age_scale"]


def age_in_years(normalised: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    return normalised * config["age_scale"] + config["age_centre"]


def translate(nets: Mapping[str, nn.Module], images: torch.Tensor, source: str) -> torch.Tensor:
    """Translate (B, 1, H, W) source images in [-1, 1] (see `to_model_space`) into CTs in [-1, 1]
    (see `ct_to_hounsfield`). H and W must be multiples of 4; the networks are fully convolutional,
    though they saw `image_size` in training. Runs the generator in eval mode without gradients;
    instance norm has no running statistics, so each image's translation is independent of its batch."""
    key = f"T_{source}"
    if key not in nets:
        known = sorted(name[2:] for name in nets if name.startswith("T_"))
        raise ValueError(f"this model translates {known} into CT, not {source!r}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, H, W), not {tuple(images.shape)}")
    if images.shape[-1] % 4 or images.shape[-2] % 4:
        raise ValueError(f"image sides must be multiples of 4, not {tuple(images.shape[-2:])}")
    generator = nets[key].to_ct
    generator.eval()
    first = next(generator.parameters())
    with torch.no_grad():
        return generator(images.to(device=first.device, dtype=first.dtype))


def predict_age(nets: Mapping[str, nn.Module], ct: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """P's physiological age in years for (B, 1, H, W) CTs in [-1, 1] (eval mode: running statistics)."""
    predictor = nets["P"]
    predictor.eval()
    first = next(predictor.parameters())
    with torch.no_grad():
        return age_in_years(predictor(ct.to(device=first.device, dtype=first.dtype)).float(), config)


def lsgan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al.): mean of (D(x) - 1)^2 for real targets, D(x)^2 for fake."""
    return F.mse_loss(logits.float(), torch.full_like(logits.float(), 1.0 if real else 0.0))


def untrained_shape(size: int, seed: int, width: int | None = None,
                    sources: Sequence[str] | None = None) -> UntrainedShape:
    """An untrained DUIIT: its one label is age, it writes no words; `sources` picks the modalities
    it translates (default: the config's)."""
    overrides: dict[str, Any] = {"image_size": size}
    if sources is not None:
        overrides["sources"] = list(sources)
    if width is not None:
        overrides.update(g_width=width, d_width=width)
    return UntrainedShape(overrides, ["age"])


SPEC = GeneratorSpec(
    name="duiit",
    summary="MRI/PET -> CT translation with a joint age regressor (DUIIT)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width", "sources"),
    recipe="factory.train.recipes.duiit:DUIITRecipe",
    products=(Translation(to_model_space=to_model_space, translate=translate, ct_to_hounsfield=ct_to_hounsfield),),
)
