"""verl 0.9.1 launcher: packaged hydra configs + ``python -m verl.trainer.main_ppo``.

Presets (``deepretrieval/configs/verl``): ``ppo`` (the paper's PPO), ``grpo``, ``lora_3b_1gpu``,
``search_r1`` (search agents: Search-R1's GRPO settings; the default for agentic tasks).
Each composes verl's own ``ppo_trainer`` and adds a task-family group (``family=beir|search_engine|
evidence|sql|agentic``: prompt/response lengths). The reward is wired through
``reward.custom_reward_function`` to :func:`deepretrieval.rewards.compute_score_async`. Agentic
tasks also get the agent-loop and tool YAML files (:func:`agent_overrides`, docs/agentic.md).
:func:`launch` is the one launch path (the training command and the quickstart), always with the
retrieval service.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.catalog import get_task, read_rows, row_prefill
from deepretrieval.core import settings
from deepretrieval.core.agent_protocol import search_tool_schema
from deepretrieval.core.io import write_atomic
from deepretrieval.data.rows import write_parquet
from deepretrieval.tasks.agentic import TAG_AGENT_LOOP
from deepretrieval.paper.presets import paper_run_overrides

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "verl"
PRESETS = ("ppo", "grpo", "lora_3b_1gpu", "search_r1")
#: Keys main_ppo (0.9.1) reads the reward function from; the top-level ``custom_reward_function``
#: block is accepted by validation but ignored.
REWARD_PATH_KEY = "reward.custom_reward_function.path"
REWARD_NAME_KEY = "reward.custom_reward_function.name"
IGNORED_REWARD_PREFIX = "custom_reward_function."


def preset_path(preset: str) -> tuple[Path, str]:
    """(config dir, config name) for a preset name or a YAML file of the user's."""
    if preset in PRESETS:
        return CONFIG_DIR, preset
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve().parent, path.stem
    raise ValueError(f"unknown verl config {preset!r}: use one of {', '.join(PRESETS)} or a .yaml file "
                     f"(which may start from `defaults: [ppo_trainer, base/deepretrieval, _self_]` with "
                     f"hydra.searchpath [pkg://verl.trainer.config, file://{CONFIG_DIR}])")


#: The search service's bearer token (read by ``deepretrieval.catalog.get_searcher``).
TOKEN_ENV = "DEEPRETRIEVAL_SEARCH_TOKEN"


def family_for(task) -> str:
    """The verl family config (``configs/verl/family/<name>.yaml``) of a task's family; a family
    without one is an error naming the families that have one."""
    name = task.family.name
    known = sorted(p.stem for p in (CONFIG_DIR / "family").glob("*.yaml"))
    if name not in known:
        raise ValueError(f"task {task.name!r}: family {name!r} has no verl config "
                         f"{CONFIG_DIR / 'family' / (name + '.yaml')}; families with one: {known}")
    return name


def default_preset(task) -> str:
    """The preset ``deepretrieval train --engine verl`` uses without ``--config``: ``search_r1``
    for agentic tasks (the paper's PPO settings are for single-shot query writing), else ``ppo``."""
    return "search_r1" if task.rollout.episodic else "ppo"


# ---------------------------------------------------------------------------------------------
# agent loop + search tool (agentic tasks)

#: Where verl 0.9.1 reads the agent-loop registry file and the tool file (rollout.yaml).
AGENT_LOOP_CONFIG_KEY = "actor_rollout_ref.rollout.agent.agent_loop_config_path"
TOOL_CONFIG_KEY = "actor_rollout_ref.rollout.multi_turn.tool_config_path"
#: The loop rows without ``agent_name`` run in (verl: ``single_turn_agent``): ours, which runs the
#: single-message protocols and refuses the others by name (a protocol no verl loop speaks writes
#: rows without ``agent_name``).
DEFAULT_AGENT_LOOP_KEY = "actor_rollout_ref.rollout.agent.default_agent_loop"
#: Classes verl instantiates by path (``hydra.utils.instantiate`` / ``get_tool_class``).
AGENT_LOOP_CLASS = "deepretrieval.train.verl_agent.SearchAgentLoop"
SEARCH_TOOL_CLASS = "deepretrieval.train.verl_agent.SearchTool"
AGENT_DIR = "verl_agent"


def write_agent_loop_config(folder: str | os.PathLike, *, max_turn_tokens: int = 500) -> Path:
    """``<folder>/agent_loops.yaml``: the tag-protocol loop under the name the rows ask for
    (``deepretrieval_agent``). Written as JSON, which is YAML. verl reads it with ``OmegaConf.load`` and passes every key but
    ``name``/``_target_`` to the loop's constructor."""
    path = (Path(folder) / "agent_loops.yaml").resolve()
    body = [{"name": TAG_AGENT_LOOP, "_target_": AGENT_LOOP_CLASS, "max_turn_tokens": int(max_turn_tokens)}]
    write_atomic(path, "# written by deepretrieval (train/verl.py); docs/agentic.md\n"
                 + json.dumps(body, indent=2) + "\n")
    return path


def write_tool_config(folder: str | os.PathLike, index: str | None = None) -> Path:
    """``<folder>/search_tool.yaml``: the ``search`` tool for verl's ``tool_agent`` (index and
    top-k come per row from ``extra_info.tools_kwargs.search.create_kwargs``; ``index``: the
    default for rows without one, e.g. verl's Search-R1 rows)."""
    path = (Path(folder) / "search_tool.yaml").resolve()
    config = {"type": "native", **({"index": index} if index else {})}
    body = {"tools": [{"class_name": SEARCH_TOOL_CLASS, "config": config,
                       "tool_schema": search_tool_schema()}]}
    write_atomic(path, "# written by deepretrieval (train/verl.py); docs/agentic.md\n"
                 + json.dumps(body, indent=2) + "\n")
    return path


def agent_overrides(out_dir: str | os.PathLike, index: str | None = None) -> list[str]:
    """Write both files under ``<out_dir>/verl_agent/`` with absolute paths (verl does not
    resolve ``pkg://`` there, and a relative path would depend on each Ray worker's directory)
    and return the overrides that point verl at them (``index``: the tool's default index)."""
    folder = Path(out_dir).resolve() / AGENT_DIR
    return [f"{AGENT_LOOP_CONFIG_KEY}={write_agent_loop_config(folder)}",
            f"{TOOL_CONFIG_KEY}={write_tool_config(folder, index)}",
            f"{DEFAULT_AGENT_LOOP_KEY}={TAG_AGENT_LOOP}"]


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides main_ppo would silently ignore."""
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        if key.startswith(IGNORED_REWARD_PREFIX):
            raise ValueError(f"{item!r}: verl 0.9.1's main_ppo ignores top-level custom_reward_function.*; "
                             f"use {REWARD_PATH_KEY} / {REWARD_NAME_KEY}")


def build_overrides(task_name: str, *, model: str, train_files: str, val_files: str, out_dir: str,
                    experiment: str | None = None, n_gpus: int | None = None, nnodes: int | None = None,
                    search_url: str | None = None, search_token: str | None = None,
                    preset: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Hydra overrides for one run (user ``extra`` overrides come last and win). With
    ``preset="ppo"`` the task's original-script values (``deepretrieval.paper.presets.PAPER_RUNS``) follow
    the family defaults."""
    task = get_task(task_name)
    out = Path(out_dir).resolve()
    items = [f"family={family_for(task)}",
             f"actor_rollout_ref.model.path={model}",
             f"data.train_files={train_files}",
             f"data.val_files={val_files}",
             f"trainer.experiment_name={experiment or task.name}",
             f"trainer.default_local_dir={out / 'checkpoints'}",
             f"trainer.validation_data_dir={out / 'validation'}"]
    if preset == "ppo":
        items += paper_run_overrides(task.name)
    if task.rollout.episodic:
        items += agent_overrides(out, task.index)
    if n_gpus is not None:
        items.append(f"trainer.n_gpus_per_node={n_gpus}")
    if nnodes is not None:
        items.append(f"trainer.nnodes={nnodes}")
    if search_url:
        # Ray workers on every node get the service address and, when the driver has one, its
        # token. verl 0.9.1 passes ``ray_kwargs.ray_init`` to ray.init *unresolved*
        # (OmegaConf.to_container without resolve), so an ``${oc.env:...}`` interpolation would
        # reach the workers as literal text: the value itself is written. It is therefore on the
        # trainer's command line and in Hydra's saved overrides (docs/training.md, multi-node).
        items.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.DEEPRETRIEVAL_SEARCH_URL={search_url}")
        token = search_token if search_token is not None else settings.get_str(TOKEN_ENV)
        if token:
            if any(c in token for c in "'\"\\$,[]{}()= \n"):
                raise ValueError(f"{TOKEN_ENV} holds characters a Hydra override cannot carry "
                                 "unquoted; use a token of letters, digits, '-', '_', '.', '~'")
            items.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{TOKEN_ENV}={token}")
    check_overrides(extra)
    return items + list(extra)


def without_prefill(train: str | os.PathLike, test: str | os.PathLike, out_dir: str | os.PathLike
                    ) -> tuple[Path, Path, bool]:
    """verl's rollout renders prompts with ``add_generation_prompt`` and cannot prefill the
    assistant turn, so rows of prefilled tasks (``*_no_reason``) get ``extra_info.prefill = ""``:
    the model writes the whole ``<answer>…</answer>`` and the reward parses exactly that.
    Returns the files to train on and whether they were rewritten."""

    def strip(path):
        rows = read_rows(path)
        changed = False
        for row in rows:
            info = row.setdefault("extra_info", {})
            if row_prefill(row):
                info["prefill"] = ""
                changed = True
        return rows, changed

    train_rows, a = strip(train)
    test_rows, b = strip(test)
    if not (a or b):
        return Path(train), Path(test), False
    folder = Path(out_dir) / "data_verl"
    return (write_parquet(train_rows, folder / "train.parquet").resolve(),
            write_parquet(test_rows, folder / "test.parquet").resolve(), True)


def compose(preset: str, overrides: Sequence[str] = ()):
    """The composed config (what main_ppo would get), without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    check_overrides(overrides)
    config_dir, name = preset_path(preset)
    overrides = list(overrides)
    verl_dir = verl_config_dir()
    if verl_dir and not any(o.startswith("hydra.searchpath") for o in overrides):
        # same folder as pkg://verl.trainer.config, without importing verl (torch, ray: seconds)
        overrides.append(f"hydra.searchpath=[file://{verl_dir}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=overrides)


def verl_config_dir() -> Path | None:
    """verl's installed ``trainer/config`` folder, found without importing verl."""
    import importlib.util
    spec = importlib.util.find_spec("verl")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "trainer" / "config"
        if (path / "ppo_trainer.yaml").is_file():
            return path
    return None


def validate(config) -> None:
    """verl's own checks (``verl.utils.config.validate_config``), as main_ppo runs them."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    validate_config(config=config, use_reference_policy=need_reference_policy(config),
                    use_critic=need_critic(config))


def command(preset: str, overrides: Sequence[str]) -> list[str]:
    config_dir, name = preset_path(preset)
    return [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={config_dir}",
            f"--config-name={name}", *overrides]


def format_command(cmd: Sequence[str]) -> str:
    return " \\\n    ".join(shlex.quote(c) for c in cmd)


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike | None = None) -> int:
    """Run main_ppo, streaming its output to the console and ``log_path``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    log = open(log_path, "ab") if log_path else None
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=False)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                if log:
                    log.write(line)
                    log.flush()
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    finally:
        if log:
            log.close()


def summary(config: Any) -> dict[str, Any]:
    """A few resolved settings worth printing before a run."""
    from omegaconf import OmegaConf
    c = config
    get = lambda key: OmegaConf.select(c, key, default=None)  # noqa: E731
    keys = ["algorithm.adv_estimator", "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.kl_coef",
            "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.kl_loss_coef",
            "actor_rollout_ref.actor.optim.lr", "critic.optim.lr", "data.train_batch_size",
            "actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.rollout.n",
            "data.max_prompt_length", "data.max_response_length", "actor_rollout_ref.model.lora_rank",
            "trainer.n_gpus_per_node", "trainer.nnodes", REWARD_PATH_KEY, REWARD_NAME_KEY,
            "trainer.default_local_dir"]
    return {k: get(k) for k in keys}


def launch(task_name: str, *, model: str, train_files: str | os.PathLike, val_files: str | os.PathLike,
           out_dir: str | os.PathLike, search_url: str, env: Mapping[str, str] | None = None,
           preset: str | None = None, n_gpus: int | None = None, nnodes: int | None = None,
           extra: Sequence[str] = (), dry_run: bool = False) -> int:
    """The one way a verl run starts (``deepretrieval train --engine verl``, the quickstart's verl
    engine): rows without the prefill verl cannot send (:func:`without_prefill`), the overrides
    (:func:`build_overrides`), the composed config written to ``<out_dir>/verl_config.yaml`` and
    printed with the command, then ``main_ppo`` with its log in ``<out_dir>/train.log``.

    Always with the retrieval service: ``search_url`` is where verl's reward workers search (on
    every node, through Ray's runtime env) and ``env`` what this launcher passes to ``main_ppo``
    (:meth:`~deepretrieval.train.service.ManagedService.env`). ``preset``: a preset or YAML file
    (default: :func:`default_preset`). Returns ``main_ppo``'s exit code (0 for ``dry_run``)."""
    if not search_url:
        raise ValueError("verl's reward workers search through the retrieval service: give its URL "
                         "(deepretrieval train starts one; or pass --search-url)")
    from omegaconf import OmegaConf

    task = get_task(task_name)
    preset = preset or default_preset(task)
    out = Path(out_dir)
    train, test = Path(train_files), Path(val_files)
    if train.is_file() and test.is_file():
        train, test, stripped = without_prefill(train, test, out)
        if stripped:
            print(f"note: verl cannot prefill the assistant turn; {task.name} rows rewritten without "
                  f"the prefill ({train.parent}) — the model writes the whole <answer>…</answer>")
    overrides = build_overrides(task.name, model=model, train_files=str(train), val_files=str(test),
                                out_dir=str(out), n_gpus=n_gpus, nnodes=nnodes, search_url=search_url,
                                preset=preset, extra=extra)
    config = compose(preset, overrides)
    cmd = command(preset, overrides)
    write_atomic(out / "verl_config.yaml", OmegaConf.to_yaml(config))
    print("verl command:\n  " + format_command(cmd))
    print("key settings:")
    for key, value in summary(config).items():
        print(f"  {key} = {value}")
    print(f"composed config: {out / 'verl_config.yaml'}")
    if dry_run:
        print("dry run: not training")
        return 0
    log_path = out / "train.log"
    code = run(cmd, env=env, log_path=log_path)
    print(f"verl exited with code {code}\ncheckpoints: {out / 'checkpoints'}\nlog: {log_path}\n"
          f"validation generations: {out / 'validation'}\n"
          f"export: deepretrieval export {out / 'checkpoints'} --out {out / 'model'}")
    return code
