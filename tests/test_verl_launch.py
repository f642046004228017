"""One verl launch path, always with the retrieval service: ``train.verl.launch`` is what
``deepretrieval train --engine verl`` and the quickstart's verl engine run."""
import argparse
import json
import socket
import urllib.request

import pytest

from deepretrieval.catalog import bundled_rows
from deepretrieval.data.rows import write_parquet
from deepretrieval.train import quickstart
from deepretrieval.train import verl as launcher

pytest.importorskip("omegaconf")

RAY_URL_KEY = "ray_kwargs.ray_init.runtime_env.env_vars.DEEPRETRIEVAL_SEARCH_URL"


def _rows(tmp_path):
    return (write_parquet(bundled_rows("scifact_no_reason", "train")[:4], tmp_path / "d" / "train.parquet"),
            write_parquet(bundled_rows("scifact_no_reason", "test")[:4], tmp_path / "d" / "test.parquet"))


def test_launch_refuses_to_run_without_the_service(tmp_path):
    train, test = _rows(tmp_path)
    with pytest.raises(ValueError, match="retrieval service"):
        launcher.launch("scifact_no_reason", model="/tmp/none", train_files=train, val_files=test,
                        out_dir=tmp_path / "run", search_url="", dry_run=True)
    assert not (tmp_path / "run").exists()


def test_launch_dry_run_points_the_reward_workers_at_the_service(tmp_path, capsys):
    from omegaconf import OmegaConf

    train, test = _rows(tmp_path)
    out = tmp_path / "run"
    code = launcher.launch("scifact_no_reason", model="/tmp/none", train_files=train, val_files=test,
                           out_dir=out, search_url="http://127.0.0.1:9", dry_run=True)
    printed = capsys.readouterr().out
    assert code == 0 and "dry run: not training" in printed and "--config-name=ppo" in printed
    config = OmegaConf.load(out / "verl_config.yaml")
    assert OmegaConf.select(config, RAY_URL_KEY) == "http://127.0.0.1:9"
    # the *_no_reason prefill is stripped for verl (it cannot prefill the assistant turn)
    assert "without the prefill" in printed
    assert str(out / "data_verl" / "train.parquet") in OmegaConf.select(config, "data.train_files")


def test_quickstart_verl_engine_runs_through_launch_with_a_live_service(tmp_path, monkeypatch, capsys):
    """The quickstart's GPU path used to run main_ppo without the service. Here the GPU and
    main_ppo are stood in for (no GPU on CI); the service is real: while "main_ppo" runs, its
    /health answers at the URL the command gives the Ray workers, with the token in the env."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    seen = {}

    def fake_main_ppo(cmd, *, env=None, log_path=None):
        url = next(c.split("=", 1)[1] for c in cmd if c.startswith("+" + RAY_URL_KEY + "="))
        request = urllib.request.Request(url + "/health",
                                         headers={"Authorization": f"Bearer {env['DEEPRETRIEVAL_SEARCH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            seen["health"] = json.loads(response.read())
        seen.update(url=url, env=dict(env), cmd=list(cmd))
        return 0

    monkeypatch.setattr(launcher, "run", fake_main_ppo)
    monkeypatch.setattr(quickstart, "export_checkpoint", lambda src, dst: dst)
    args = argparse.Namespace(task="scifact_no_reason", steps=2, prompts_per_step=2, num_generations=2,
                              lr=1e-6, temperature=1.0)
    rows = bundled_rows("scifact_no_reason", "train")[:4]
    model_dir, _ = quickstart._train_verl("/tmp/none", rows, rows, tmp_path, args)
    assert model_dir == str(tmp_path / "verl" / "model")
    assert seen["health"] and seen["env"]["DEEPRETRIEVAL_SEARCH_URL"] == seen["url"]
    assert "--config-name=grpo" in seen["cmd"] and "trainer.total_training_steps=2" in seen["cmd"]
    assert (tmp_path / "verl" / "verl_config.yaml").is_file()
    port = int(seen["url"].rsplit(":", 1)[1])
    with socket.socket() as sock:  # the service is stopped once the run is over
        sock.settimeout(1)
        assert sock.connect_ex(("127.0.0.1", port)) != 0
