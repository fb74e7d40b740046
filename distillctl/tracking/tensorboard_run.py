"""TensorBoard: event files in the stage's tensorboard/ folder, written with torch's SummaryWriter."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from distillctl.tracking import RunInfo


class TensorBoardRun:
    """Scalars against the training step; the config and the report as text; plots as images."""

    def __init__(self, settings: DictConfig, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = info.out_dir / "tensorboard"
        self.writer = SummaryWriter(str(self.folder), flush_secs=settings.flush_secs)
        # Markdown: four spaces make the YAML a code block, which keeps its indentation.
        self.writer.add_text("config", "".join(f"    {line}\n" for line in info.config_yaml.splitlines()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.suffix == ".md":
                self.writer.add_text(path.name, path.read_text())
            elif path.suffix == ".png":
                from matplotlib.image import imread

                self.writer.add_image(path.stem, imread(path)[..., :3], dataformats="HWC")

    def close(self, outcome: str) -> None:
        self.writer.close()

    def identity(self) -> str:
        return str(self.folder)


def open_run(settings: DictConfig, info: RunInfo) -> TensorBoardRun:
    """The stage's TensorBoard writer."""
    return TensorBoardRun(settings, info)
