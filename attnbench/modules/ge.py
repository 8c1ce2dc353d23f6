"""Gather-Excite (Hu et al., arXiv 1810.12348), after the official release hujie-frank/GENet, which is Caffe
(prototxts models/RN50-GEPF.prototxt, RN50-GEP.prototxt, RN50-GEPP.prototxt and the schemas
figures/GEPF8.jpg, figures/GEP8.jpg); not Lua. The layer structure of those files is followed exactly:

- theta_minus (GE-theta-, parameter-free; RN50-GEPF): global average pool -> sigmoid -> x * gate.
  With extent e (figure GEPF8): average pooling of kernel 2e-1, stride e, to ceil(H/e) x ceil(W/e)
  -> nearest interpolation back to H x W -> sigmoid. No prototxt was released for extents, so the
  padding is inferred: e-1 (floor rounding), which gives the figure's ceil(H/e) at every size and
  centres window j on row e*j, exactly the receptive field and grid of theta's chain of log2(e)
  padded 3x3 stride-2 convs; the padding counts in the divisor, as in Caffe's AVE pooling.
- theta (GE-theta; RN50-GEP): a depthwise conv without bias whose kernel is the whole H x W map -> BN
  -> sigmoid. With extent e (figure GEP8): log2(e) depthwise 3x3 stride-2 convs without bias, each
  followed by BN, with ReLU between them (none after the last) -> nearest interpolation -> sigmoid.
- theta_plus (GE-theta+; RN50-GEPP): the global depthwise gather -> BN -> ReLU -> 1x1 conv C -> C/r
  -> ReLU -> 1x1 conv C/r -> C (both with bias) -> sigmoid. The release has it at global extent only.

The global depthwise kernel needs the map size at construction: `feature_size` (H, W). Fillers as in
the prototxts: depthwise convs "msra" (Kaiming normal, fan in), the 1x1 excite convs Gaussian std 0.01
with zero bias; BN eps 1e-5 and moving-average fraction 0.95 (PyTorch momentum 0.05), scale 1, bias 0.
In the release the gate multiplies the residual branch before the shortcut is added (Axpy layer),
in every bottleneck of conv2_x to conv5_x.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice, Int
from attnbench.modules.registry import register_module

VARIANTS = ("theta_minus", "theta", "theta_plus")
BN_MOMENTUM = 0.05  # Caffe CuDNNBatchNorm momentum 0.95 is the running average's keep fraction


def _check(channels: int, hp: dict[str, Any]) -> None:
    extent = hp["extent"]
    if hp["variant"] == "theta" and extent is not None and extent & (extent - 1):
        raise ConfigError("extent", extent, "a power of two (log2(e) stride-2 convs) or null for the global extent")
    if hp["variant"] == "theta_plus":
        if extent is not None:
            raise ConfigError("extent", extent, "null: the official GE-theta+ gathers over the global extent only")
        if hp["reduction"] > channels:
            raise ConfigError("reduction", hp["reduction"], f"at most the channel count {channels} (C // reduction must be >= 1)")


def _depthwise(channels: int, kernel_size: int | tuple[int, int], stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """Depthwise conv without bias, Caffe's msra filler (Kaiming normal, fan in)."""
    conv = nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


def _excite_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """1x1 conv with bias, Caffe's gaussian(std 0.01) weight and constant(0) bias fillers."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.normal_(conv.weight, std=0.01)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


@register_module(
    "ge",
    kind="gate",
    paper="Gather-Excite: Exploiting Feature Context in CNNs, arXiv 1810.12348",
    code="hujie-frank/GENet",
    params={
        "variant": Choice(
            "theta_minus", choices=VARIANTS,
            help="GE-theta- (parameter-free), GE-theta (depthwise gather), GE-theta+ (+ SE-style excite)",
        ),
        "extent": Int(None, low=2, high=64, none_means="the global extent", help="e: the gather pools e x e cells"),
        "reduction": Int(16, low=1, high=1024, log=True, help="r of GE-theta+'s 1x1 excite convs"),
    },
    check_channels=_check,
)
class GatherExcite(nn.Module):
    """GE block: x * sigmoid(upsample(gather(x))), with the excite convs in between for GE-theta+."""

    def __init__(
        self,
        channels: int,
        variant: str = "theta_minus",
        extent: int | None = None,
        reduction: int = 16,
        feature_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        _check(channels, {"variant": variant, "extent": extent, "reduction": reduction})
        self.extent = extent
        self.gather: nn.Module | None = None
        self.excite: nn.Module | None = None
        if variant == "theta_minus":
            return
        if extent is None:
            if feature_size is None:
                raise ConfigError("feature_size", None,
                                  "the (H, W) of the input map: the global depthwise kernel covers all of it")
            height, width = feature_size
            kernel = (height, width)
            layers: list[nn.Module] = [_depthwise(channels, kernel), nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)]
        else:
            layers = []
            for step in range(extent.bit_length() - 1):
                if step:
                    layers.append(nn.ReLU(inplace=True))
                layers += [_depthwise(channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)]
        self.gather = nn.Sequential(*layers)
        if variant == "theta_plus":
            hidden = channels // reduction
            self.excite = nn.Sequential(
                nn.ReLU(inplace=True), _excite_conv(channels, hidden), nn.ReLU(inplace=True), _excite_conv(hidden, channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.gather is not None:
            gathered = self.gather(x)
        elif self.extent is None:
            gathered = x.mean(dim=(2, 3), keepdim=True)
        else:
            e = self.extent
            gathered = F.avg_pool2d(x, 2 * e - 1, stride=e, padding=e - 1)
        if self.excite is not None:
            gathered = self.excite(gathered)
        if self.extent is not None:
            # the official order: interpolate, then sigmoid; the global map (1 x 1) broadcasts instead
            gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
        return x * gathered.sigmoid()
