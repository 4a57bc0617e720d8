"""Small torch networks for the zoo: stand-ins for an obstacle detector, a tabular classifier and a vision backbone."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """input FP32 [N,3,64,64] -> three conv blocks -> linear head -> scores FP32 [N,4]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32x32
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # 4x4
        )
        self.head = nn.Linear(32 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of 64x64 RGB images."""
        scores: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return scores


class TinyMLP(nn.Module):
    """input FP32 [N,64] -> 256 -> 256 -> logits FP32 [N,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 64-feature rows."""
        logits: torch.Tensor = self.layers(x)
        return logits


def _divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never more than 10 % below it (as MobileNetV2)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU6): the exporter folds the BatchNorm into the conv."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden), _conv_bn(hidden, cout, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus its input when the shapes match."""
        out: torch.Tensor = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) at a width multiplier; input FP32 [N,3,H,W] -> scores FP32 [N,classes].

    The zoo's compute-dominated vision model: the paper's layer table (as torchvision builds it), with fixed
    random weights (a benchmark load, not a classifier). Convs get He init over their fan-in, so activations
    keep their scale through the 17 blocks (torchvision's fan-out init shrinks them ~1e8-fold untrained).
    """

    # (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 0.5, classes: int = 10, last_channels: int = 1280) -> None:
        super().__init__()
        cin = _divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, stride=2)]
        for expand, channels, repeats, stride in self.SETTINGS:
            cout = _divisible(channels * width)
            for i in range(repeats):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        last = _divisible(last_channels * max(1.0, width))
        layers.append(_conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(last, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of RGB images."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        scores: torch.Tensor = self.head(pooled)
        return scores
