"""Every pretraining config composes, validates, and runs one short epoch on a generated tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.checkpoint import latest_checkpoint, load_checkpoint
from agent.config import CFG_ROOT, compose
from tests.conftest import make_demo_npz

# behaviour-cloning configs (Cal-QL's offline stage, also under pretrain/, is tested with the other algorithms)
PRETRAIN_CONFIGS = sorted(p for p in CFG_ROOT.glob("*/pretrain/*/*.yaml") if not p.stem.startswith("calql"))


def test_every_dppo_pretrain_config_exists():
    names = {(p.parent.name, p.stem) for p in PRETRAIN_CONFIGS}
    for task in ("hopper-medium-v2", "walker2d-medium-v2", "halfcheetah-medium-v2"):
        assert {(task, "pre_diffusion_mlp"), (task, "pre_gaussian_mlp")} <= names
    for task in ("lift", "can", "square", "transport"):
        for p in (
            "diffusion_mlp",
            "diffusion_unet",
            "gaussian_mlp",
            "gaussian_transformer",
            "gmm_mlp",
            "gmm_transformer",
            "diffusion_mlp_img",
            "diffusion_unet_img",
            "gaussian_mlp_img",
        ):
            assert (task, f"pre_{p}") in names
    for m in (1, 2, 3):
        for p in ("diffusion_mlp", "gaussian_mlp", "gmm_mlp"):
            assert (f"avoid_m{m}", f"pre_{p}") in names


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: f"{p.parts[-4]}/{p.parent.name}/{p.stem}")
def test_pretrain_config_runs_one_epoch(path: Path, tmp_dirs: Path):
    from agent.pretrain import PretrainAgent

    base = compose(path.parent, path.stem, ["device=cpu", "wandb=null"])
    # Pixel configs read <task>-img/train.npz with `images`; 24x24 frames (not 96x96) keep this CPU test short.
    use_img = bool(base.train_dataset.get("use_img", False))
    image_shape = (base.shape_meta.obs.rgb.shape[0], 24, 24) if use_img else None
    small_images = [f"shape_meta.obs.rgb.shape=[{','.join(map(str, image_shape))}]"] if use_img else []
    folder = f"{base.env}-img" if use_img else base.env
    data = make_demo_npz(
        tmp_dirs / "data" / base.suite / folder / "train.npz",
        base.obs_dim,
        base.action_dim,
        (24, 20),
        image_shape=image_shape,
    )
    assert Path(base.train_dataset_path) == data
    cfg = compose(
        path.parent,
        path.stem,
        [
            "device=cpu",
            "wandb=null",
            "train.n_epochs=1",
            "train.batch_size=16",  # the config's own warm-up (robomimic: 100 epochs) must fit a 1-epoch run
            *small_images,
        ],
    )
    agent = PretrainAgent(cfg)
    agent.run()
    ckpt = load_checkpoint(latest_checkpoint(cfg.logdir))
    assert ckpt["epoch"] == 1 and ckpt["config"]["env"] == base.env
    assert ckpt["normalization"]["obs_min"].shape == (base.obs_dim,)
    with torch.no_grad():
        actions = agent.ema.model.sample(agent.dataset.get_batch(torch.arange(3)).cond, deterministic=True).actions
    assert actions.shape == (3, cfg.horizon_steps, cfg.action_dim) and torch.isfinite(actions).all()


def _accepted_tasks(script: str) -> set[str] | None:
    """The `--task` values a dataset script accepts (None: any name, e.g. a converter's output folder)."""
    if script == "download":
        from script.dataset.download import DATASETS

        return {task for _, task in DATASETS}
    if script == "generate_robomimic":
        from script.dataset.generate_robomimic import TASKS

        return set(TASKS)
    if script == "generate_locomotion":
        from script.dataset.generate_locomotion import TASKS

        return set(TASKS)
    return None


@pytest.mark.parametrize(
    "path", PRETRAIN_CONFIGS, ids=lambda p: f"{p.parent.parent.parent.name}/{p.parent.name}/{p.stem}"
)
def test_missing_data_message_names_commands_that_exist_for_this_task(path: Path):
    import re

    from script.dataset.download import DATASETS

    cfg = compose(path.parent, path.stem, ["wandb=null"])
    hint = cfg.train_dataset.hint
    folder = Path(cfg.train_dataset_path).parent.name
    if (cfg.suite, folder) in DATASETS:
        assert f"download.py --task {folder}`" in hint, hint
    commands = re.findall(r"`python (script/dataset/\w+)\.py([^`]*)`", hint)
    assert commands, f"no command in the missing-data hint: {hint}"
    for script, args in commands:
        assert (CFG_ROOT.parent / f"{script}.py").is_file(), script
        task = re.search(r"--task (\S+)", args)
        accepted = _accepted_tasks(Path(script).name)
        if task and accepted is not None:
            assert task.group(1) in accepted, f"{script} does not accept --task {task.group(1)} (hint: {hint})"


def test_dppo_variant_configs_exist():
    """DPPO's experiment variants at DPPO's paths: single-action chunks (_ta1), proficient-human data (_ph), the
    diffusion baselines from scratch, Franka Kitchen's Gaussian pretraining and its evaluation."""
    expected = [
        "gym/finetune/halfcheetah-v2/ft_ppo_diffusion_mlp_ta1",
        "gym/eval/kitchen-v0/eval_diffusion_mlp",
        *(f"gym/pretrain/kitchen-{t}-v0/pre_gaussian_mlp" for t in ("complete", "mixed", "partial")),
        *(f"gym/scratch/hopper-v2/{a}_diffusion_mlp" for a in ("dql", "qsm", "dipo", "idql", "rwr", "awr")),
    ]
    for task in ("can", "square"):
        expected += [
            f"robomimic/pretrain/{task}/pre_diffusion_mlp_ta1",
            f"robomimic/pretrain/{task}/pre_diffusion_mlp_ta1_ph",
            f"robomimic/pretrain/{task}/pre_gaussian_mlp_ta1_ph",
            f"robomimic/finetune/{task}/ft_ppo_diffusion_mlp_ta1",
            f"robomimic/finetune/{task}/ft_ppo_diffusion_mlp_ta1_ph",
        ]
    missing = [name for name in expected if not (CFG_ROOT / f"{name}.yaml").is_file()]
    assert not missing, missing
    ph = compose(CFG_ROOT / "robomimic/pretrain/can", "pre_gaussian_mlp_ta1_ph", ["wandb=null"])
    assert ph.train_dataset_path.endswith("robomimic/can-ph/train.npz") and ph.horizon_steps == 1
