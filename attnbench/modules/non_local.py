"""Non-local block (Wang et al., arXiv 1711.07971), after the official Caffe2 code,
facebookresearch/video-nonlocal-net lib/models/nonlocal_helper.py (spacetime_nonlocal, add_nonlocal),
here in 2-D; the modes the Caffe2 code lacks follow mmcv's NonLocal2d (mmcv/cnn/bricks/non_local.py).

z = x + BN(W y), y_i = sum_j f(theta_i, phi_j) g_j / C, with 1x1 convs (with biases) theta, phi, g
from C to C // reduction channels (official: C / 2). With `sub_sample` (official USE_MAXPOOL) phi and g
see a 2x2 max-pooled input. Pairwise functions (paper eqs. 2-4, Table 2a):
- embedded_gaussian: softmax_j(theta_i . phi_j * (C/r)^-1/2); the scale is the official USE_SCALE,
  which the paper does not mention (`use_scale`, embedded_gaussian only, as in mmcv).
- dot_product: theta_i . phi_j / N' (official USE_SOFTMAX False; N' = positions of phi).
- gaussian: softmax_j(x_i . x_j), no theta / phi convs (mmcv).
- concatenation: ReLU(w . [theta_i, phi_j]) / N', w a bias-free 1x1 conv (mmcv's concat_project,
  on the expanded pair map as mmcv builds it, so its cost is counted as run).
Where the paper and the official code disagree (the code is followed; tests pin each):
- the scale above;
- sub-sampling: the paper puts the max pool after phi and g (so does mmcv); the Caffe2 code pools
  x once and feeds the pooled map to the phi and g convs, which is not the same with biases.
Initialisation: theta / phi / g normal(std 0.01), biases 0, as both codes do. The block starts as the
identity: with `bn` (Caffe2: USE_BN, BN_INIT_GAMMA 0) W is normal(std 0.01) and the BN after it has
gamma 0; without it (mmcv's default, norm_cfg None) there is no BN and W itself is zero-initialised.
The Caffe2 form is the default because it is the official code and the paper's Sec. 4 describes it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.gates import reduced_channels_check
from attnbench.modules.hparams import Bool, Choice, Int
from attnbench.modules.registry import Placement, register_module

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
INIT_STD = 0.01  # official NONLOCAL.CONV_INIT_STD


def _embedding(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 conv with bias, normal(std 0.01) weights and a zero bias (official GaussianFill / ConstantFill)."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.normal_(conv.weight, std=INIT_STD)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


@register_module(
    "nonlocal",
    kind="gate",
    paper="Non-local Neural Networks, arXiv 1711.07971",
    code="facebookresearch/video-nonlocal-net",
    params={
        "mode": Choice("embedded_gaussian", choices=MODES, help="pairwise function f (paper Table 2a)"),
        "reduction": Int(2, low=1, high=1024, log=True, help="theta / phi / g width C // reduction (official: 2)"),
        "use_scale": Bool(True, help="scale theta.phi by (C/r)^-1/2 before the softmax (official USE_SCALE; embedded_gaussian)"),
        "sub_sample": Bool(True, help="2x2 max pool of the input of phi and g (official USE_MAXPOOL)"),
        "bn": Bool(True, help="BN with gamma 0 after W (official Caffe2); false: no BN, W zero-initialised (mmcv default)"),
    },
    check_channels=reduced_channels_check(),
    # the paper's COCO and ImageNet models: one block, before the last block of res4 (ResNet stage 4)
    placement=Placement(position="post", stages=(-2,), blocks=(-2,)),
)
class NonLocal(nn.Module):
    """Non-local block with its residual: x + W(y)."""

    def __init__(
        self,
        channels: int,
        mode: str = "embedded_gaussian",
        reduction: int = 2,
        use_scale: bool = True,
        sub_sample: bool = True,
        bn: bool = True,
    ) -> None:
        super().__init__()
        inter = channels // reduction
        self.mode = mode
        self.scale = inter ** -0.5 if use_scale and mode == "embedded_gaussian" else None
        self.pool = nn.MaxPool2d(2) if sub_sample else None
        self.g = _embedding(channels, inter)
        self.theta = _embedding(channels, inter) if mode != "gaussian" else None
        self.phi = _embedding(channels, inter) if mode != "gaussian" else None
        self.concat_project = None
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter, 1, 1, bias=False)
            nn.init.kaiming_normal_(self.concat_project.weight, mode="fan_out", nonlinearity="relu")  # mmcv ConvModule
        self.out = nn.Conv2d(inter, channels, 1)
        self.bn = nn.BatchNorm2d(channels) if bn else None
        if self.bn is not None:
            nn.init.normal_(self.out.weight, std=INIT_STD)
            nn.init.zeros_(self.bn.weight)
        else:
            nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
        nn.init.zeros_(self.out.bias)

    def pairwise(self, theta: Tensor, phi: Tensor) -> Tensor:
        """f(theta_i, phi_j) / C(x): (N, c, L) and (N, c, L') -> (N, L, L'), normalised over j."""
        if self.concat_project is not None:  # mode concatenation
            size = (-1, -1, theta.shape[2], phi.shape[2])
            pairs = torch.cat([theta[:, :, :, None].expand(size), phi[:, :, None, :].expand(size)], dim=1)
            return torch.relu(self.concat_project(pairs))[:, 0] / phi.shape[2]
        affinity = torch.matmul(theta.transpose(1, 2), phi)
        if self.mode == "dot_product":
            return affinity / phi.shape[2]
        if self.scale is not None:
            affinity = affinity * self.scale
        return torch.softmax(affinity, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        pooled = x if self.pool is None else self.pool(x)
        if self.theta is None or self.phi is None:  # mode gaussian: no embeddings
            theta, phi = x.flatten(2), pooled.flatten(2)
        else:
            theta, phi = self.theta(x).flatten(2), self.phi(pooled).flatten(2)
        g = self.g(pooled).flatten(2)
        y = torch.matmul(g, self.pairwise(theta, phi).transpose(1, 2))  # (N, c, L): official BatchMatMul(g, p^T)
        z = self.out(y.reshape(n, -1, h, w))
        return x + (z if self.bn is None else self.bn(z))
