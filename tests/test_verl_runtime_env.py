"""Multi-node: the search service's URL and token reach Ray workers through the runtime env."""
import pytest
from omegaconf import OmegaConf

from deepretrieval.train import verl as launcher

pytest.importorskip("hydra")


def _cfg(monkeypatch, tmp_path, token):
    if token is None:
        monkeypatch.delenv(launcher.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(launcher.TOKEN_ENV, token)
    overrides = launcher.build_overrides(
        "scifact", model="/m", train_files=str(tmp_path / "t.parquet"),
        val_files=str(tmp_path / "v.parquet"), out_dir=str(tmp_path), nnodes=2,
        search_url="http://10.0.0.5:8600")
    return overrides, launcher.compose("ppo", overrides)


def _ray_init_env(cfg):
    """What verl 0.9.1's main_ppo hands to ray.init: the defaults merged with
    ray_kwargs.ray_init.runtime_env, converted WITHOUT resolving interpolations."""
    ray_init = cfg.ray_kwargs.get("ray_init", {})
    runtime_env = OmegaConf.merge({"env_vars": {"TOKENIZERS_PARALLELISM": "true"}},
                                  ray_init.get("runtime_env", {}))
    kwargs = OmegaConf.to_container(OmegaConf.create({**ray_init, "runtime_env": runtime_env}))
    env = kwargs["runtime_env"]["env_vars"]
    env.pop("TOKENIZERS_PARALLELISM")
    return env


@pytest.mark.slow
def test_token_reaches_the_ray_workers_runtime_env(monkeypatch, tmp_path):
    _, cfg = _cfg(monkeypatch, tmp_path, "s3cr3t-token")
    env = _ray_init_env(cfg)
    assert env == {"DEEPRETRIEVAL_SEARCH_URL": "http://10.0.0.5:8600",
                   "DEEPRETRIEVAL_SEARCH_TOKEN": "s3cr3t-token"}


def test_no_token_no_entry(monkeypatch, tmp_path):
    _, cfg = _cfg(monkeypatch, tmp_path, None)
    env = _ray_init_env(cfg)
    assert env == {"DEEPRETRIEVAL_SEARCH_URL": "http://10.0.0.5:8600"}


def test_a_token_hydra_cannot_carry_is_refused(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="cannot carry"):
        _cfg(monkeypatch, tmp_path, "a,b")


@pytest.mark.slow
def test_a_ray_serve_url_reaches_the_workers_as_written(monkeypatch, tmp_path):
    """``ray://APP`` (the Ray Serve application's handles, docs/scale_out.md) passes Hydra."""
    monkeypatch.delenv(launcher.TOKEN_ENV, raising=False)
    overrides = launcher.build_overrides(
        "scifact", model="/m", train_files=str(tmp_path / "t.parquet"),
        val_files=str(tmp_path / "v.parquet"), out_dir=str(tmp_path), nnodes=2,
        search_url="ray://deepretrieval")
    env = _ray_init_env(launcher.compose("ppo", overrides))
    assert env == {"DEEPRETRIEVAL_SEARCH_URL": "ray://deepretrieval"}
