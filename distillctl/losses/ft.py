"""Factor transfer (Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS).

A paraphraser, an autoencoder of three 3x3 convolutions each way, learns to compress the teacher's feature map to
`rate` times its channels ("factors"); a translator of the same shape maps the student's feature map to factors of
that size; the term is the mean absolute difference of the two factor maps, each flattened and L2-normalized (the
paper's p = 1). The paper's two stages run in one training: for the first `paraphraser_epochs` this term alone counts
and is the paraphraser's reconstruction error (MSE), which reaches neither the student nor the translator, so the
optimizer leaves them untouched (it skips parameters without gradients); afterwards the paraphraser is frozen (the
teacher's factors come without gradients) and the translator trains with the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import OneLayer, placed_like, same_size
from distillctl.losses.registry import term


def convolutions(widths: list[int], transposed: bool = False, norm: bool = False) -> nn.Sequential:
    """3x3 (transposed) convolutions between consecutive `widths`, each followed by BN (if `norm`) and LeakyReLU(0.1),
    the reference's building block for both networks."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [conv(a, b, 3, 1, 1), *([nn.BatchNorm2d(b)] if norm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """The teacher side: encoder to factors, and the decoder that trains it by reconstruction (no BN, as the reference)."""

    def __init__(self, channels: int, factors: int) -> None:
        super().__init__()
        self.encoder = convolutions([channels, channels, factors, factors])
        self.decoder = convolutions([factors, factors, channels, channels], transposed=True)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `feature`."""
        return self.decoder(self.encoder(feature))


def factor_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean |s - t| of the factor maps, each image's flattened and L2-normalized."""
    student, teacher = same_size(student.float(), teacher.float())
    return (F.normalize(student.flatten(1), dim=1) - F.normalize(teacher.flatten(1), dim=1)).abs().mean()


@term("ft")
class FactorTransfer(OneLayer):
    """The student's translated factors against the factors a paraphraser trained on the teacher's feature finds."""

    feature_ranks = (4,)

    def alone_until_epoch(self) -> int:
        return self.params.paraphraser_epochs

    def setup(self, probe: StepOutputs) -> None:
        s, t = self.pair(probe)
        factors = max(1, int(t.shape[1] * self.params.rate))
        self.paraphraser = placed_like(Paraphraser(t.shape[1], factors), t)
        self.translator = placed_like(convolutions([s.shape[1], s.shape[1], factors, factors], norm=True), s)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s, t = self.pair(out)
        t = t.float()
        if out.epoch <= self.params.paraphraser_epochs:
            # The reference trains the paraphraser on its plain MSE; the objective multiplies every term by its
            # weight (200 here, meant for the factor loss), which made this stage diverge at lr 0.05.
            reconstruction = F.mse_loss(self.paraphraser(t), t)
            return reconstruction / self.params.weight if self.params.weight else reconstruction
        with torch.no_grad():
            factors = self.paraphraser.encoder(t)
        return factor_loss(self.translator(s), factors)
