"""Where timm's published weights for a model name come from, and whether this machine has them already.

Asked before the data load, so that `pretrained=true` for a model timm publishes no weights for, or for weights that
an offline machine lacks, is refused in seconds instead of after minutes of reading images. The sources are the
ones timm's own loader picks: the Hub when the model names a Hub repository, else a URL into torch's hub cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from distillctl.errors import UserError, did_you_mean
from distillctl.hub_access import offline

# timm asks for pytorch_model.bin and takes the safetensors file first where the repository has one.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def published_source(name: str) -> str | None:
    """The Hub repository (`timm/NAME.TAG`) or URL timm loads `name`'s weights from; None when it publishes none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    return cfg.hf_hub_id or cfg.url or None


def cached_file(name: str) -> Path | None:
    """The weights file of `name` in the local Hugging Face or torch hub cache, when one is there."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else []) + list(HUB_FILES):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(cfg.url).path)
        return path if path.is_file() else None
    return None


def check_published(name: str, role: str) -> None:
    """Refuse `ROLE.pretrained=true` when timm publishes no weights for `name`, or when the Hub is out of reach and
    the weights are not in the local cache, naming what to do instead."""
    key = f"{role}."
    source = published_source(name)
    if source is None:
        from timm import list_pretrained

        tagged = list_pretrained(f"{name.split('.')[0]}.*")[:4]
        hint = f" Tags of it with weights: {', '.join(tagged)}." if tagged else did_you_mean(name, list_pretrained())
        raise UserError(f"{key}pretrained=true: timm publishes no weights for '{name}'.{hint} Set {key}pretrained=false to "
                        f"train it from scratch, or give {key}pretrained_file=PATH.")
    if offline() and cached_file(name) is None:
        raise UserError(f"{key}pretrained=true: the weights of '{name}' are not in the local cache, and the Hub is offline. "
                        f"{fetch_once(source)}, or give {key}pretrained_file=PATH.")


def fetch_once(source: str) -> str:
    """How to put the weights from `source` into the cache timm reads, on a machine with network."""
    if source.startswith(("http:", "https:")):
        import torch.hub

        return f"Download {source} once into {Path(torch.hub.get_dir()) / 'checkpoints'}"
    repo, _, revision = source.partition("@")
    return f"Fetch them once with network: `hf download {repo}{f' --revision {revision}' if revision else ''}` fills the same cache"
