"""Small builders shared by several test files (not collected by pytest: no ``test_`` prefix)."""
import numpy as np


def ellipsoid_grid(shape, semi_axis_fraction=0.42):
    """Index grids ``g`` (float, ``indexing="ij"``), the volume's centre ``c`` (voxels) and a boolean
    ellipsoid mask centred there with semi-axes ``semi_axis_fraction * shape``."""
    g = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = [(n - 1) / 2 for n in shape]
    mask = sum(((a - cc) / (semi_axis_fraction * n)) ** 2 for a, cc, n in zip(g, c, shape)) < 1
    return g, c, mask


def untrained_net(cin=3, cout=2, width=4, seed=0, random_bn_affine=False):
    """A chi-sepnet U-Net with seeded random weights and BatchNorm running statistics away from the
    identity (so that folding or skipping BatchNorm changes the output), in eval mode;
    ``random_bn_affine`` also draws BatchNorm's scale and shift."""
    import torch

    from chisep.network.unet import ChiSepUNet

    torch.manual_seed(seed)
    m = ChiSepUNet(cin, cout, width)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                if random_bn_affine:
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.1, 0.1)
    return m.eval()
