"""The chi-sepnet 3-D U-Net (docs/DESIGN.md, "Network"), with the authors' module names.

Four max-pool levels (spatial sizes must be multiples of 16), channels w, 2w, 4w, 8w, 16w, two
Conv3d(3^3, pad 1) -> BatchNorm3d -> ReLU blocks per level, ConvTranspose3d(2, stride 2) up,
concatenated skips and a 1x1x1 head. Width 32 is the published size (about 22.6 M parameters);
smaller widths give the compact CPU variants with the same code.

State-dict keys follow the published code, so its checkpoints load unchanged:
``conv11 .. conv42, l_conv1, l_conv2`` (``.conv``/``.bn``), ``deconv4 .. deconv1`` (``.deconv``),
``conv51 .. conv82`` and the head ``out.conv``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    """Conv3d 3x3x3 (pad 1) -> BatchNorm3d -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(cout)
        #: set by :func:`fuse_relu` (inference on CPU only): one oneDNN call for conv + ReLU
        self.fused_relu = False

    def forward(self, x):
        if self.fused_relu and isinstance(self.bn, nn.Identity) and x.device.type == "cpu":
            c = self.conv
            return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, list(c.padding), list(c.stride),
                                                           list(c.dilation), c.groups, "relu", [], "")
        return F.relu(self.bn(self.conv(x)), inplace=True)


class UpBlock(nn.Module):
    """ConvTranspose3d(2, stride 2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2)

    def forward(self, x):
        return self.deconv(x)


class OutBlock(nn.Module):
    """1x1x1 head."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class ChiSepUNet(nn.Module):
    """chi-sepnet U-Net: ``(N, in_channels, X, Y, Z) -> (N, out_channels, X, Y, Z)``, X, Y, Z multiples of 16."""

    #: spatial sizes must be multiples of this
    MULTIPLE = 16

    def __init__(self, in_channels: int = 3, out_channels: int = 2, width: int = 32):
        super().__init__()
        w = int(width)
        if w < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.in_channels, self.out_channels, self.width = int(in_channels), int(out_channels), w
        self.conv11, self.conv12 = ConvBlock(in_channels, w), ConvBlock(w, w)
        self.conv21, self.conv22 = ConvBlock(w, 2 * w), ConvBlock(2 * w, 2 * w)
        self.conv31, self.conv32 = ConvBlock(2 * w, 4 * w), ConvBlock(4 * w, 4 * w)
        self.conv41, self.conv42 = ConvBlock(4 * w, 8 * w), ConvBlock(8 * w, 8 * w)
        self.l_conv1, self.l_conv2 = ConvBlock(8 * w, 16 * w), ConvBlock(16 * w, 16 * w)
        self.deconv4 = UpBlock(16 * w, 8 * w)
        self.conv51, self.conv52 = ConvBlock(16 * w, 8 * w), ConvBlock(8 * w, 8 * w)
        self.deconv3 = UpBlock(8 * w, 4 * w)
        self.conv61, self.conv62 = ConvBlock(8 * w, 4 * w), ConvBlock(4 * w, 4 * w)
        self.deconv2 = UpBlock(4 * w, 2 * w)
        self.conv71, self.conv72 = ConvBlock(4 * w, 2 * w), ConvBlock(2 * w, 2 * w)
        self.deconv1 = UpBlock(2 * w, w)
        self.conv81, self.conv82 = ConvBlock(2 * w, w), ConvBlock(w, w)
        self.out = OutBlock(w, out_channels)

    def forward(self, x):
        e1 = self.conv12(self.conv11(x))
        e2 = self.conv22(self.conv21(F.max_pool3d(e1, 2)))
        e3 = self.conv32(self.conv31(F.max_pool3d(e2, 2)))
        e4 = self.conv42(self.conv41(F.max_pool3d(e3, 2)))
        b = self.l_conv2(self.l_conv1(F.max_pool3d(e4, 2)))
        d = self.conv52(self.conv51(torch.cat([self.deconv4(b), e4], 1)))
        d = self.conv62(self.conv61(torch.cat([self.deconv3(d), e3], 1)))
        d = self.conv72(self.conv71(torch.cat([self.deconv2(d), e2], 1)))
        d = self.conv82(self.conv81(torch.cat([self.deconv1(d), e1], 1)))
        return self.out(d)


def fuse_batchnorm(model: ChiSepUNet) -> ChiSepUNet:
    """Fold every eval-mode BatchNorm into its convolution (in place; inference only).

    The result computes the same function as ``model.eval()`` with one fewer pass over memory
    per block; the BatchNorm modules become identities.
    """
    for m in model.modules():
        if isinstance(m, ConvBlock) and isinstance(m.bn, nn.BatchNorm3d):
            conv, bn = m.conv, m.bn
            with torch.no_grad():
                scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
                wt = conv.weight.float() * scale.view(-1, 1, 1, 1, 1)
                b = conv.bias.float() if conv.bias is not None else torch.zeros_like(bn.running_mean.float())
                b = (b - bn.running_mean.float()) * scale + bn.bias.float()
                conv.weight.copy_(wt.to(conv.weight.dtype))
                if conv.bias is None:
                    conv.bias = nn.Parameter(b.to(conv.weight.dtype))
                else:
                    conv.bias.copy_(b.to(conv.bias.dtype))
            m.bn = nn.Identity()
    return model


def fuse_relu(model: ChiSepUNet) -> bool:
    """Run each (BatchNorm-folded) conv + ReLU as one oneDNN call on the CPU, where this torch build
    has the op and it reproduces the unfused block exactly on a probe; returns whether it is on.

    Inference only (no autograd); saves one pass over memory per block (~30 % of a block's time).
    """
    blocks = [m for m in model.modules() if isinstance(m, ConvBlock)]
    if not blocks or not all(isinstance(b.bn, nn.Identity) for b in blocks):
        return False
    if not (hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and torch.backends.mkldnn.is_available()):
        return False
    b = blocks[1]
    p = next(b.parameters())
    if p.device.type != "cpu":
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((1, b.conv.in_channels, 8, 8, 8), generator=g).to(p.dtype)
        if p.dim() == 5 and p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            ref = F.relu(b.conv(x))
            b.fused_relu = True
            got = b(x)
        ok = bool(torch.allclose(ref.float(), got.float(), rtol=1e-2, atol=1e-3 * float(ref.abs().max()) + 1e-6))
    except Exception:
        ok = False
    for m in blocks:
        m.fused_relu = ok
    return ok
