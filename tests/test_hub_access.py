"""An unreachable Hub is found out with one connection attempt: the run goes on from the local Hugging Face cache, or
names what is missing, at once instead of after the Hub libraries' half-minute of retries per file."""

from __future__ import annotations

import socket

import pytest
from omegaconf import OmegaConf

from distillctl import hub_access

from conftest import TINY


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_listening_endpoint_is_reachable_and_a_closed_one_says_why():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_access.unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None
    assert "refused" in hub_access.unreachable(f"http://127.0.0.1:{closed_port()}").lower()


@pytest.mark.parametrize("proxy", [None, "http://proxy.example:3128"])
def test_offline_mode_goes_on_only_for_a_run_that_needs_the_hub_and_cannot_reach_it(monkeypatch, proxy):
    for name in (*hub_access.OFFLINE_VARIABLES, *hub_access.PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    if proxy:  # the Hub is reached through the proxy: a direct connection failing proves nothing
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    model = {"checkpoint": None, "pretrained": False, "pretrained_file": None}
    cfg = OmegaConf.create({"teacher": model, "student": model, "dataset": {"path": "cifar10", "train_split": "train"}})
    hub_access.offline_unless_reachable(cfg, reads_data=False)
    assert not hub_access.offline()  # nothing here fetches from the Hub
    cfg.teacher.pretrained = True
    hub_access.offline_unless_reachable(cfg, reads_data=False)
    assert hub_access.offline() == (proxy is None)


def write_hub_cache(home, repo_id: str, files: dict[str, bytes]) -> None:
    """The Hugging Face cache layout a download leaves: the revision `main` names a snapshot holding the files."""
    commit = "0" * 40
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, data in files.items():
        (repo / "snapshots" / commit / name).write_bytes(data)


@pytest.mark.slow
def test_with_the_hub_unreachable_cached_weights_load_at_once_and_missing_ones_are_named(cli, tmp_path):
    import timm
    import torch
    from safetensors.torch import load_file, save

    name = "mobilenetv3_small_050"
    offline_node = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_HOME": str(tmp_path / "hf"),
                    "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    run = ["train-teacher", f"teacher={name}", "teacher.checkpoint=null", "teacher.pretrained=true", *TINY, "trainer.max_steps_per_epoch=1",
           "optimizer.lr=1e-12", "trainer.threads=1", "run_dir=runs/hub"]
    missing = cli(*run, env=offline_node)
    assert missing.code == 2 and "teacher.pretrained_file=PATH" in missing.err, missing.text
    assert "cannot be reached" in missing.out and "local Hugging Face cache only" in missing.out
    # The Hub library did not retry: it was imported (by a check of the model's name, say) only after offline mode was on.
    assert "Retrying" not in missing.text, missing.text

    torch.manual_seed(0)  # weights as published, 1000 classes; the run replaces the head for CIFAR-10's 10
    published = {k: v.contiguous() for k, v in timm.create_model(name, num_classes=1000).state_dict().items()}
    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    write_hub_cache(tmp_path / "hf", repo_id, {"model.safetensors": save(published)})
    cached = cli(*run, env=offline_node)
    assert cached.code == 0, cached.text
    trained = load_file(str(tmp_path / "runs/hub/teacher/model.safetensors"))
    stem = next(k for k in published if k.endswith("conv_stem.weight"))
    assert torch.allclose(trained[stem], published[stem], atol=1e-6)  # a step of lr 1e-12: still the cached weights
