"""Pure-PyTorch deformable convolution with torchvision.ops.deform_conv2d's conventions (CPU and GPU).

Offsets are (N, 2*G*k*k, Ho, Wo): for deformable group g and tap t (row-major over the k x k
kernel) channel g*2kk + 2t is the row shift and g*2kk + 2t + 1 the column shift; the mask is
(N, G*k*k, Ho, Wo). Input channels split into G consecutive groups, each following its own offsets.
Sampling is bilinear, and neighbours outside the image contribute zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _tap_positions(size_out: int, kernel_size: int, stride: int, padding: int, like: Tensor, row: bool) -> Tensor:
    """Undeformed sampling coordinate of every tap and output position along one axis: (k*k, size_out)."""
    taps = torch.arange(kernel_size, device=like.device, dtype=like.dtype)
    # taps are row-major: tap t sits at kernel row t // k, kernel column t % k
    taps = taps.repeat_interleave(kernel_size) if row else taps.repeat(kernel_size)
    outputs = torch.arange(size_out, device=like.device, dtype=like.dtype) * stride - padding
    return taps[:, None] + outputs[None, :]


def deform_columns(
    x: Tensor, offset: Tensor, kernel_size: int, stride: int = 1, padding: int = 0, mask: Tensor | None = None
) -> Tensor:
    """The input bilinearly sampled at every deformed tap, times the mask if given: (N, C, k*k, Ho, Wo)."""
    n, channels, height, width = x.shape
    taps = kernel_size * kernel_size
    out_h = (height + 2 * padding - kernel_size) // stride + 1
    out_w = (width + 2 * padding - kernel_size) // stride + 1
    groups = offset.shape[1] // (2 * taps)
    if offset.shape != (n, 2 * groups * taps, out_h, out_w) or groups < 1 or channels % groups:
        raise ValueError(
            f"offset of shape {tuple(offset.shape)} does not fit input {tuple(x.shape)} with kernel {kernel_size}, "
            f"stride {stride}, padding {padding}: expected (N, 2*G*{taps}, {out_h}, {out_w}) with G dividing {channels}"
        )
    offset = offset.reshape(n, groups, taps, 2, out_h, out_w)
    rows = _tap_positions(out_h, kernel_size, stride, padding, offset, row=True)[:, :, None] + offset[:, :, :, 0]
    cols = _tap_positions(out_w, kernel_size, stride, padding, offset, row=False)[:, None, :] + offset[:, :, :, 1]
    # align_corners=False puts pixel p at (2p + 1) / size - 1; unlike align_corners=True it stays
    # exact on 1-pixel maps (a ResNet's last stage at small inputs), where (size - 1) would be zero
    grid = torch.stack(((2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1), dim=-1)
    sampled = F.grid_sample(
        x.reshape(n * groups, channels // groups, height, width),
        grid.view(n * groups, taps * out_h, out_w, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(n, groups, channels // groups, taps, out_h, out_w)
    if mask is not None:
        sampled = sampled * mask.reshape(n, groups, 1, taps, out_h, out_w)
    return sampled.reshape(n, channels, taps, out_h, out_w)


def deform_conv2d(
    x: Tensor, offset: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, mask: Tensor | None = None
) -> Tensor:
    """Deformable convolution without bias: y(p0) = sum_n w(pn) * x(p0 + pn + dpn) * dmn."""
    out_channels, _, kernel_size, _ = weight.shape
    columns = deform_columns(x, offset, kernel_size, stride, padding, mask)
    n, _, _, out_h, out_w = columns.shape
    # one matmul over C*k*k, so FLOP counters see exactly the dense convolution's MACs; batch-first
    # operand order because fvcore's matmul handle drops the batch of a batched right operand
    out = columns.reshape(n, -1, out_h * out_w).transpose(1, 2) @ weight.reshape(out_channels, -1).t()
    out = out.transpose(1, 2).view(n, out_channels, out_h, out_w)  # channels-last strides, free
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()
