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
    """A key the constructor does not take is one line with its path; the node's key spelt almost the same (an
    appended typo beside the real key) is suggested, a merely similar one (in_features) is not."""
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3, "out_feature": 3})
    with pytest.raises(
        ConfigError, match=r"^net.out_feature is not a parameter of Linear; did you mean net.out_features\?$"
    ):
        instantiate(node, "net")
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 2, "out_feature": 3})
    with pytest.raises(
        ConfigError,
        match=r"^net.out_feature is not a parameter of Linear; see the Args in the docstring of torch.nn.Linear$",
    ):
        instantiate(node, "net")
    node = OmegaConf.create({"_target_": "torch.nn.Sequential", "0": {"_target_": "torch.nn.Linear", "in_feature": 2}})
    with pytest.raises(ConfigError, match=r"^net.0.in_feature is not a parameter of Linear"):
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


def test_safe_eval_bounds_integers_and_sequences_before_computing():
    from agent.config import MAX_EVAL_INT_BITS, MAX_EVAL_SEQUENCE, EvalError

    assert safe_eval(f"2**{MAX_EVAL_INT_BITS}") == 1 << MAX_EVAL_INT_BITS  # the largest power allowed
    with pytest.raises(EvalError, match=f"the power has at least {MAX_EVAL_INT_BITS + 1} bits"):
        safe_eval(f"2**{MAX_EVAL_INT_BITS + 1}")
    with pytest.raises(EvalError, match="at least 1162261467 bits"):  # 9**9 = 387420489 times 3 bits
        safe_eval("9**9**9")
    assert safe_eval("(-1)**(10**12)") == 1 and safe_eval("2**-3") == 0.125  # cheap whatever the exponent
    assert len(safe_eval(f"'ab'*{MAX_EVAL_SEQUENCE // 2}")) == MAX_EVAL_SEQUENCE
    with pytest.raises(EvalError, match="the repeated sequence has 10000000000 items"):
        safe_eval('"a"*10**10')
    with pytest.raises(EvalError, match=f"the repeated sequence has {MAX_EVAL_SEQUENCE + 1} items"):
        safe_eval(f"{MAX_EVAL_SEQUENCE + 1}*[0]")
    with pytest.raises(EvalError, match="the product has more than"):
        safe_eval("10**1000*10**1000")
    with pytest.raises(EvalError, match=r"\${eval:'1/0'} cannot be evaluated: division by zero"):
        safe_eval("1/0")


def test_an_eval_error_names_the_key_and_the_expression():
    from agent.config import register_resolvers, resolve_config

    register_resolvers()
    cfg = OmegaConf.create({"train": {"n_envs": 4, "batch_size": "${eval:'${train.n_envs} // 0'}"}})
    with pytest.raises(ConfigError) as err:
        resolve_config(cfg)
    assert str(err.value) == "train.batch_size=${eval:'4 // 0'} cannot be evaluated: integer division or modulo by zero"
    with pytest.raises(ConfigError, match="the config does not resolve: Interpolation key 'nope' not found"):
        resolve_config(OmegaConf.create({"a": "${nope}"}))


def test_env_count_is_bounded_by_a_ceiling_and_the_memory(monkeypatch):
    import agent.config as config

    assert 1 <= config.max_envs() <= config.MAX_ENVS
    monkeypatch.setattr(config.os, "sysconf", lambda name: 1024 if name == "SC_PHYS_PAGES" else 1 << 20)  # 1 GiB
    assert config.max_envs() == 128  # 1 GiB / 8 MiB
    validate_common(_base(env={"n_envs": 128}))
    with pytest.raises(ConfigError, match=r"env.n_envs=129 is more envs than a run can hold \(at most 128"):
        validate_common(_base(env={"n_envs": 129}))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"train": {"n_steps": 0, "batch_size": 0}}, "train.n_steps must be"),  # the setting, not the derived size
        ({"env": {"n_envs": 0}, "train": {"batch_size": 0}}, "env.n_envs must be"),
        ({"model": {"network": {"mlp_dims": "abc"}}}, r"model.network.mlp_dims must be a list .*got 'abc'"),
        ({"model": {"critic": {"mlp_dims": [64, 0]}}}, r"model.critic.mlp_dims must be .*got \[64, 0\]"),
    ],
)
def test_validate_common_names_the_setting_at_fault(kw, message):
    with pytest.raises(ConfigError, match=message):
        validate_common(_base(**kw))


def test_layer_widths_may_be_null_or_lists():
    validate_common(_base(model={"network": {"mlp_dims": [8, 8], "cond_mlp_dims": None}}))
