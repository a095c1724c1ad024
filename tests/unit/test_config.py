"""Config resolvers and the checks that stop a run before any work."""

import pytest
import torch
from omegaconf import OmegaConf

from agent.config import CFG_ROOT, compose, instantiate, safe_eval, validate_common
from agent.errors import ConfigError
from agent.utils import resolve_device


def test_safe_eval_arithmetic_and_refusals():
    assert safe_eval("11 * 1") == 11
    assert safe_eval("40 * 500 * 10 // 4") == 50000
    assert safe_eval("max(2, 3) + 1.5") == 4.5
    assert safe_eval("1 if 2 > 1 else 0") == 1
    with pytest.raises(ValueError):
        safe_eval("__import__('os').system('true')")


def test_eval_resolver_in_config():
    from agent.config import register_resolvers

    register_resolvers()
    cfg = OmegaConf.create({"obs_dim": 11, "cond_steps": 2, "d": "${eval:'${obs_dim} * ${cond_steps}'}"})
    assert cfg.d == 22


def _base(**kw):
    cfg = {"seed": 0, "horizon_steps": 4, "act_steps": 4, "cond_steps": 1, "denoising_steps": 20}
    cfg.update(kw)
    return OmegaConf.create(cfg)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"act_steps": 8}, "act_steps=8 is larger than horizon_steps=4"),
        ({"horizon_steps": 0}, "horizon_steps must be an integer >= 1"),
        ({"cond_steps": 0}, "cond_steps must be an integer >= 1"),
        ({"ft_denoising_steps": 21}, "ft_denoising_steps=21 is larger than denoising_steps=20"),
        ({"seed": -1}, "seed must be"),
        ({"img_cond_steps": 2}, "img_cond_steps=2"),
    ],
)
def test_validate_common_messages(kw, message):
    with pytest.raises(ConfigError, match=message):
        validate_common(_base(**kw))


def test_ddim_limits_ft_steps():
    cfg = _base(denoising_steps=100, ft_denoising_steps=10, model={"use_ddim": True, "ddim_steps": 5})
    with pytest.raises(ConfigError, match="model.ddim_steps=5"):
        validate_common(cfg)


def test_instantiate_rejects_unknown_key_with_suggestion():
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 2, "out_feature": 3})
    with pytest.raises(ConfigError, match="did you mean net.out_features"):
        instantiate(node, "net")
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3})
    assert isinstance(instantiate(node, "net"), torch.nn.Linear)


def test_device_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_env_var_dirs(tmp_dirs):
    cfg = compose(CFG_ROOT / "gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp")
    assert cfg.train_dataset_path == str(tmp_dirs / "data" / "gym" / "hopper-medium-v2" / "train.npz")
    assert cfg.logdir.startswith(str(tmp_dirs / "log" / "gym-pretrain" / "hopper-medium-v2_pre_diffusion_mlp"))


def test_fresh_run_dir_never_reuses_a_logged_folder(tmp_path):
    from agent.base import fresh_run_dir

    run = tmp_path / "2026-01-01_00-00-00_42"
    assert fresh_run_dir(run) == run
    run.mkdir()
    assert fresh_run_dir(run) == run  # an empty folder (e.g. Hydra's) is fine
    (run / "metrics.jsonl").write_text("{}\n")
    assert fresh_run_dir(run).name == "2026-01-01_00-00-00_42_1"
    (tmp_path / "2026-01-01_00-00-00_42_1").mkdir()
    (tmp_path / "2026-01-01_00-00-00_42_1" / "metrics.jsonl").write_text("{}\n")
    assert fresh_run_dir(run).name == "2026-01-01_00-00-00_42_2"
