"""Batched augmentation on the training device: one gather per batch, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift that map uint8 pixels straight to normalized floats: x * scale + shift."""
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


def to_model_input(images_nhwc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> normalized float NCHW (channels_last memory is the NHWC layout itself, so no copy)."""
    x = images_nhwc.permute(0, 3, 1, 2).float().mul_(scale).add_(shift)
    return x if channels_last else x.contiguous()


def local_part(n: int, rank: int, world: int) -> torch.Tensor:
    """Positions in a global batch of n that process `rank` of `world` trains on: equal, contiguous shares; a last
    batch that does not divide evenly wraps around (as torch's DistributedSampler pads) so that no process gets none."""
    size = -(-n // world)
    return (rank * size + torch.arange(size)) % n


def steps_per_pass(images: int, batch_size: int, max_steps: int | None, world: int = 1) -> int:
    """Batches in one pass over `images` (the last one may be short), capped at max_steps. A last batch that would
    give each of the `world` processes one image is left out of the pass: BatchNorm cannot train on one (a folder of
    33 photos at batch 32), and the shuffle leaves out another image each epoch."""
    steps = -(-images // batch_size)
    if steps > 1 and 0 < images % batch_size <= world:
        steps -= 1
    return min(steps, max_steps) if max_steps else steps


class Batches:
    """Shuffled training batches with random crop (zero padding) and horizontal flip, on `device`.

    Every process of a multi-process job draws the same global batches and augmentations and keeps its `shard`
    (rank, processes) of each, so that together they train on what one process would."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        seed: int,
        padding: int = 4,
        hflip: bool = True,
        channels_last: bool = False,
        max_steps: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.shard = shard
        self.padding, self.hflip, self.batch_size, self.channels_last = padding, hflip, batch_size, channels_last
        # Crop offsets per axis and flips per offset: the discrete views of an image (`keys`, `view`, `num_views`).
        self.span, self.flips = 2 * padding + 1, 2 if hflip else 1
        self.height, self.width = images.shape[1], images.shape[2]
        # Pad once up front; each batch then only gathers its crop window.
        nhwc = images.to(device)
        self.images = F.pad(nhwc.permute(0, 3, 1, 2), (padding,) * 4).permute(0, 2, 3, 1).contiguous() if padding else nhwc
        self.labels = labels.to(device)
        self.device = device
        self.scale, self.shift = normalizer(mean, std, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.steps = steps_per_pass(len(labels), batch_size, max_steps, shard[1])
        # The RNG state a pass starts from, and how far into it we are: a mid-epoch checkpoint saves both, and a
        # resumed pass replays the skipped steps' draws so that the rest of the epoch is what it would have been.
        self.pass_state = self.generator.get_state()
        self.step = self.resume_step = 0
        # (image positions, view numbers) of the batch last yielded: what a teacher-logit cache is keyed by.
        self.keys: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.steps

    @property
    def num_images(self) -> int:
        """Images one pass yields."""
        return min(self.steps * self.batch_size, len(self.labels))

    @property
    def positions(self) -> torch.Tensor | None:
        """Where the images of the batch last yielded are in the split (CRD's memory bank index)."""
        return self.keys[0] if self.keys is not None else None

    @property
    def split_size(self) -> int:
        """Images in the split that `positions` count in."""
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.set_state(self.pass_state)
        order = torch.randperm(len(self.labels), device=self.device, generator=self.generator)
        for step in range(self.steps):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            n = len(idx)
            dy = torch.randint(self.span, (n,), device=self.device, generator=self.generator)
            dx = torch.randint(self.span, (n,), device=self.device, generator=self.generator)
            flip = torch.zeros(n, dtype=torch.bool, device=self.device)
            if self.hflip:
                flip = torch.rand(n, device=self.device, generator=self.generator) < 0.5
            if step < self.resume_step:
                continue
            if self.shard[1] > 1:
                mine = local_part(n, *self.shard).to(self.device)
                idx, dy, dx, flip = idx[mine], dy[mine], dx[mine], flip[mine]
            self.step = step + 1
            self.keys = idx, (dy * self.span + dx) * self.flips + flip
            yield self.crops(idx, dy, dx, flip), self.labels[idx]
        self.pass_state, self.step, self.resume_step = self.generator.get_state(), 0, 0

    @property
    def num_views(self) -> int:
        """How many distinct augmented views each image has: every crop offset, each flipped and not."""
        return self.span**2 * self.flips

    def crops(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Model input for images `idx` cropped at offsets (dy, dx) of the padded image and flipped where `flip`."""
        rows = dy[:, None] + torch.arange(self.height, device=self.device)
        cols = dx[:, None] + torch.arange(self.width, device=self.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        gathered = self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        return to_model_input(gathered, self.scale, self.shift, self.channels_last)

    def view(self, idx: torch.Tensor, view: int) -> torch.Tensor:
        """Model input for images `idx`, all in one view (the numbering of `keys`)."""
        offset, flip = divmod(view, self.flips)
        dy, dx = divmod(offset, self.span)
        n = len(idx)
        full = partial(torch.full, (n,), device=self.device)
        return self.crops(idx, full(dy), full(dx), full(bool(flip), dtype=torch.bool))

    @property
    def first_step(self) -> int:
        """Steps of the coming pass already done before a mid-epoch checkpoint (0 at an epoch's start)."""
        return self.resume_step

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffling/augmentation RNG at the start of the pass and the steps done in it."""
        return {"generator": self.pass_state, "step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict saved: the next pass starts where the saved one stopped."""
        self.pass_state = state["generator"]
        self.resume_step = int(state.get("step", 0))


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Unaugmented batches in order, for validation and test."""
    scale, shift = normalizer(mean, std, device)
    for start in range(0, len(labels), batch_size):
        chunk = images[start : start + batch_size].to(device, non_blocking=True)
        yield to_model_input(chunk, scale, shift, channels_last), labels[start : start + batch_size].to(device)


class TensorSplit:
    """A split decoded whole into uint8 [N, H, W, 3] tensors: the fastest path for images that fit in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int = 4, hflip: bool = True,
                 problems: set[str] | None = None) -> None:
        self.images, self.labels, self.padding, self.hflip = images, labels, padding, hflip
        self.problems = problems or set()  # images skipped while decoding

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "TensorSplit":
        """The split's images at these positions."""
        return TensorSplit(self.images[indices], self.labels[indices], self.padding, self.hflip, self.problems)

    def eval_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                     channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Unaugmented batches in order."""
        return eval_batches(self.images, self.labels, batch_size, mean, std, device, channels_last)

    def train_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device, seed: int,
                      channels_last: bool = False, max_steps: int | None = None, shard: tuple[int, int] = (0, 1)) -> Batches:
        """Shuffled batches with pad-crop and flip, made on the training device; `batch_size` is the global batch
        of which this process trains its `shard` (rank, processes)."""
        return Batches(self.images, self.labels, batch_size, mean, std, device, seed, self.padding, self.hflip, channels_last,
                       max_steps, shard)
