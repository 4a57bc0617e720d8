"""Small torch networks for the zoo: stand-ins for an obstacle detector and a tabular classifier."""

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
