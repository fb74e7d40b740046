"""Whether the Hugging Face Hub can be reached, asked once before anything fetches from it.

Without network the Hub libraries retry each request with backoff (1 + 2 + 4 + 8 + 8 s) before they fall back to
their cache or give up: on a cluster's compute node that is half a minute per file and per run, even for weights
fetched long ago on the login node. One connection attempt answers in a moment. When it fails, the run goes on as
HF_HUB_OFFLINE=1 would have it: what the cache holds loads at once, and what it lacks is named at once.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from omegaconf import DictConfig

from distillctl.console import console

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# With a proxy the Hub is reached through it, and a direct connection proves nothing either way.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
CONNECT_TIMEOUT_S = 3.0


def offline() -> bool:
    """Whether the Hugging Face libraries were told not to use the network."""
    return any(os.environ.get(name) == "1" for name in OFFLINE_VARIABLES)


def needs_hub(cfg: DictConfig, reads_data: bool) -> bool:
    """Whether the run fetches from the Hub: a Hub data set, or published weights with no local file for them."""
    from distillctl.data.sources import locate
    from distillctl.teacher_files import PUBLISHED

    published = cfg.teacher.checkpoint == PUBLISHED and not cfg.teacher.pretrained_file
    pretrained = any(cfg[role].pretrained and not cfg[role].pretrained_file for role in ("teacher", "student"))
    hub_data = reads_data and locate(cfg.dataset.path, train_split=cfg.dataset.train_split).local_dir is None
    return published or pretrained or hub_data


def unreachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why no connection to `endpoint` (a URL) opens within `timeout_s`, or None when one does."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def offline_unless_reachable(cfg: DictConfig, reads_data: bool) -> None:
    """Turn on the Hub's offline mode for this process and those it starts when the run needs the Hub and it
    cannot be reached. Called before the Hub libraries are imported (the preflight, which imports no torch)."""
    if offline() or any(os.environ.get(name) for name in PROXY_VARIABLES) or not needs_hub(cfg, reads_data):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    reason = unreachable(endpoint)
    if reason is None:
        return
    for name in OFFLINE_VARIABLES:  # before huggingface_hub and datasets are imported: they read them once, then
        os.environ[name] = "1"
    console.print(f"[yellow]the Hugging Face Hub ({urlsplit(endpoint).hostname}) cannot be reached ({reason}): this run "
                  "uses the local Hugging Face cache only, as HF_HUB_OFFLINE=1 would[/]")
