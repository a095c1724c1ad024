"""Typed config blocks (agent/schemas.py): defaults in one place, one-line errors naming the key, and the
composed pretraining config typed by its schema."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from agent.config import CFG_ROOT, compose
from agent.errors import ConfigError
from agent.schemas import (
    AWRTrain,
    CalQLTrain,
    DIPOTrain,
    DQLTrain,
    Ema,
    FQLTrain,
    IBRLTrain,
    IDQLTrain,
    LrScheduler,
    PPOTrain,
    PretrainTrain,
    QSMTrain,
    RLPDTrain,
    RWRTrain,
    SACTrain,
    load_block,
)


def test_defaults_are_dppos_gym_pretraining_values():
    t = load_block(PretrainTrain, {}, "train")
    assert (t.n_epochs, t.batch_size, t.learning_rate, t.weight_decay) == (200, 128, 1e-3, 1e-6)
    assert t.lr_scheduler == LrScheduler(first_cycle_steps=200, warmup_steps=1, min_lr=1e-4)
    assert (t.save_model_freq, t.epoch_start_ema, t.update_ema_freq, t.nan_policy) == (100, 20, 10, "stop")
    assert load_block(Ema, None, "ema").decay == 0.995


def test_given_values_override_and_nested_blocks_merge():
    t = load_block(PretrainTrain, {"n_epochs": 7, "lr_scheduler": {"first_cycle_steps": 7}}, "train")
    assert t.n_epochs == 7 and t.lr_scheduler == LrScheduler(7, 1, 1e-4)  # the others keep their defaults
    assert load_block(PretrainTrain, {"nan_policy": None}, "train").nan_policy == "stop"


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"n_epochs": "abc"}, "train.n_epochs: Value 'abc' of type 'str' could not be converted to Integer"),
        ({"n_epochs": 0}, "train.n_epochs must be >= 1, got 0"),
        ({"learning_rate": -1.0}, "train.learning_rate must be > 0, got -1.0"),
        ({"lr_scheduler": {"warmup_steps": -1}}, "train.lr_scheduler.warmup_steps must be >= 0, got -1"),
        ({"lr_scheduler": {"first_cycle_steps": 0}}, "train.lr_scheduler.first_cycle_steps must be >= 1, got 0"),
        ({"lr_scheduler": {"cycle": 3}}, "train.lr_scheduler.cycle is not a key of train"),
        ({"nan_policy": "ignore"}, "train.nan_policy must be one of stop, skip_batch, got 'ignore'"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(node, message):
    with pytest.raises(ConfigError) as info:
        load_block(PretrainTrain, node, "train")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_key_added_on_purpose_is_ignored_with_a_warning_naming_the_closest(caplog):
    """`+train.n_epoch=3` (or a sweep's `++` keys meant for another algorithm) does not stop the run."""
    with caplog.at_level("WARNING"):
        t = load_block(PretrainTrain, {"n_epoch": 3}, "train")
    assert t.n_epochs == 200
    assert "train.n_epoch is not used here and is ignored (did you mean train.n_epochs?)" in caplog.text


def test_ema_decay_range():
    with pytest.raises(ConfigError, match=r"ema.decay must be in \[0, 1\), got 1.0"):
        load_block(Ema, {"decay": 1.0}, "ema")


def test_every_pretraining_config_is_typed_by_the_schema():
    """Each pretraining experiment file composes with `train` typed as PretrainTrain and `ema` as Ema, and loads."""
    paths = sorted(p for p in CFG_ROOT.glob("*/pretrain/*/*.yaml") if not p.stem.startswith("calql"))
    assert len(paths) > 50
    for path in paths[:: max(1, len(paths) // 12)]:  # a spread of suites and policies; all are composed in configs/
        cfg = compose(path.parent, path.stem, ["wandb=null"])
        assert OmegaConf.get_type(cfg.train) is PretrainTrain, path
        assert OmegaConf.get_type(cfg.ema) is Ema, path
        train = load_block(PretrainTrain, cfg.train, "train")
        assert train.lr_scheduler.first_cycle_steps >= 1, path  # DPPO's gym Gaussian: 1000 cycle over 500 epochs
    cfg = compose(CFG_ROOT / "gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp", ["train.n_epochs=7"])
    assert load_block(PretrainTrain, cfg.train, "train").lr_scheduler.first_cycle_steps == 7  # follows n_epochs


def test_composition_rejects_a_key_the_schema_lacks_and_a_wrong_type():
    folder = CFG_ROOT / "gym/pretrain/hopper-medium-v2"
    cfg = compose(folder, "pre_diffusion_mlp", ["train.n_epochs=5"])
    assert cfg.train.n_epochs == 5 and isinstance(cfg.train.n_epochs, int)
    with pytest.raises(ConfigCompositionException) as info:
        compose(folder, "pre_diffusion_mlp", ["train.n_epochs=abc"])
    assert "could not be converted to Integer" in str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose(folder, "pre_diffusion_mlp", ["train.n_epoch=3"])


def test_the_config_reference_in_docs_is_generated_from_the_schemas():
    from script.config_reference import OUT, render

    assert OUT.read_text() == render(), "run python script/config_reference.py"
    assert "| `n_epochs` | `int` | `200` |" in render()


FINETUNE_SCHEMAS = {
    "PPOAgent": PPOTrain,
    "DQLAgent": DQLTrain,
    "QSMAgent": QSMTrain,
    "DIPOAgent": DIPOTrain,
    "IDQLAgent": IDQLTrain,
    "AWRAgent": AWRTrain,
    "RWRAgent": RWRTrain,
    "FQLAgent": FQLTrain,
    "SACAgent": SACTrain,
    "RLPDAgent": RLPDTrain,
    "IBRLAgent": IBRLTrain,
    "CalQLAgent": CalQLTrain,
}


def test_every_finetuning_config_is_typed_by_its_algorithms_schema():
    """The schema is the first default of each algorithm's suite piece, so YAML values land on it (a schema merged
    after a plain block would reset the block to its defaults)."""
    from hydra.utils import get_class

    paths = sorted(CFG_ROOT.glob("*/finetune/*/*.yaml")) + sorted(CFG_ROOT.glob("*/scratch/*/*.yaml"))
    seen = set()
    for path in paths:
        cfg = compose(path.parent, path.stem, ["wandb=null"])
        agent = cfg._target_.split(".")[-1]
        schema = FINETUNE_SCHEMAS[agent]
        assert OmegaConf.get_type(cfg.train) is schema, path
        assert get_class(cfg._target_).algorithm_class.train_schema is schema
        seen.add(agent)
    assert seen == set(FINETUNE_SCHEMAS)


def test_finetuning_values_come_from_the_yaml_over_the_schema_defaults():
    ppo = compose(CFG_ROOT / "robomimic/finetune/lift", "ft_ppo_gaussian_mlp_cpu", [])
    assert (ppo.train.n_steps, ppo.train.batch_size, ppo.train.max_wall_min) == (75, 300, 60)  # the preset's
    assert ppo.train.eval_n_episodes == ppo.env.n_envs == 20  # the YAML's interpolation
    assert ppo.train.gae_lambda == 0.95  # the schema's default
    folder = CFG_ROOT / "gym/finetune/hopper-v2"
    dql = compose(folder, "ft_dql_diffusion_mlp", ["train.replay_ratio=8"])
    assert dql.train.replay_ratio == 8.0 and dql.train.target_ema_rate == 0.005 and dql.train.buffer_size == 1000000
    assert dql.train.scale_reward_factor == 0.01  # gym's actor-critic piece


def test_finetuning_schema_defaults_are_dppos_values():
    ppo = load_block(PPOTrain, {}, "train")
    assert (ppo.n_train_itr, ppo.n_steps, ppo.batch_size, ppo.update_epochs, ppo.gamma, ppo.gae_lambda) == (
        1000,
        500,
        50000,
        5,
        0.99,
        0.95,
    )
    assert ppo.actor_lr_scheduler == LrScheduler(1000, 10, 1e-4) and ppo.target_kl == 1.0
    assert load_block(IDQLTrain, {}, "train").replay_ratio == 128.0
    assert load_block(RWRTrain, {}, "train").update_epochs == 16


@pytest.mark.parametrize(
    ("schema", "node", "message"),
    [
        (DQLTrain, {"eta": -1}, "train.eta must be >= 0, got -1.0"),
        (DIPOTrain, {"action_gradient_steps": 0}, "train.action_gradient_steps must be >= 1, got 0"),
        (IDQLTrain, {"expectile": 1.0}, "train.expectile must be in (0, 1), got 1.0"),
        (AWRTrain, {"td_lambda": 1.5}, "train.td_lambda must be in [0, 1], got 1.5"),
        (RWRTrain, {"lr": 0}, "train.lr must be set to a value > 0, got 0.0"),
        (PPOTrain, {"actor_lr_scheduler": {"warmup_steps": -1}}, "train.actor_lr_scheduler.warmup_steps"),
        (
            PPOTrain,
            {"critic_lr_scheduler": {"first_cycle_steps": 3, "warmup_steps": 3}},
            "train.critic_lr_scheduler: warmup_steps=3 must be in [0, first_cycle_steps=3)",
        ),  # fmt: skip
        (PPOTrain, {"gamma": 1.5}, "train.gamma must be in (0, 1], got 1.5"),
        (PPOTrain, {"gae_lambda": 2}, "train.gae_lambda must be in [0, 1], got 2.0"),
        (PPOTrain, {"target_kl": 0}, "train.target_kl must be > 0 or null, got 0.0"),
        (PPOTrain, {"use_bc_loss": True}, "train.use_bc_loss needs train.bc_loss_coeff > 0"),
        (QSMTrain, {"critic_tau": 0}, "train.critic_tau must be in (0, 1], got 0.0"),
        (DQLTrain, {"n_steps": 0}, "train.n_steps must be an integer >= 1, got 0"),
        (AWRTrain, {"max_wall_min": True}, "train.max_wall_min must be a positive number or null, got True"),
        (RWRTrain, {"lr_scheduler": {"first_cycle_steps": 2, "warmup_steps": 5}}, "train.lr_scheduler: warmup_steps=5"),
    ],
)
def test_finetuning_range_checks_are_one_line_naming_the_key(schema, node, message):
    with pytest.raises(ConfigError) as info:
        load_block(schema, node, "train")
    assert str(info.value).startswith(message)


def test_the_wandb_block_is_typed_and_null_turns_it_off(tmp_path):
    from agent.logger import Logger
    from agent.schemas import Wandb

    folder = CFG_ROOT / "gym/finetune/hopper-v2"
    cfg = compose(folder, "ft_ppo_diffusion_mlp", ["wandb.mode=disabled"])
    assert OmegaConf.get_type(cfg.wandb) is Wandb and cfg.wandb.project == "gym-hopper-medium-v2"
    assert compose(folder, "ft_ppo_diffusion_mlp", ["wandb=null"]).wandb is None
    logger = Logger(tmp_path, wandb_cfg=load_block(Wandb, cfg.wandb, "wandb"))
    logger.log({"train/x": 1.0}, step=1)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().count("train/x") == 1


def test_every_policy_piece_types_the_model_block_with_its_familys_keys():
    """Each `cfg/common/policy/*.yaml` names its family's schema, so the composed `model` block holds every key of
    the family's `Keys` dataclass, typed, with the YAML's values over the defaults."""
    from dataclasses import fields

    from hydra.utils import get_class
    from omegaconf import FloatNode, IntegerNode

    from agent.schemas import policy_schemas

    families = {f"{c.__module__}.{c.__name__}": c for c in policy_schemas().values()}
    paths = sorted(CFG_ROOT.glob("*/pretrain/*/pre_*.yaml"))
    seen = set()
    for path in paths[:: max(1, len(paths) // 40)] + [
        CFG_ROOT / "gym/finetune/hopper-v2/ft_ppo_exact_diffusion_mlp.yaml"
    ]:
        cfg = compose(path.parent, path.stem, ["wandb=null"])
        policy = get_class(cfg.model._target_)
        if policy not in families.values():
            continue
        seen.add(policy.__name__)
        for f in fields(policy.Keys):
            assert f.name in cfg.model, (path, f.name)
            node = cfg.model._get_node(f.name)
            kind = {"int": IntegerNode, "float": FloatNode}.get(str(f.type).split(" ")[0])
            assert kind is None or isinstance(node, kind), (path, f.name, type(node))
    assert seen >= {"DiffusionModel", "FlowModel", "GaussianModel", "GMMModel", "ExactDiffusion"}, seen
    pre = compose(CFG_ROOT / "gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp", [])
    assert pre.model.denoising_steps == 20 and pre.model.ft_denoising_steps == 0  # the YAML's, the schema's default
    assert pre.model.randn_clip_value == 10.0 and isinstance(pre.model.randn_clip_value, float)
    short = compose(CFG_ROOT / "gym/pretrain/hopper-medium-v2", "pre_shortcut_mlp", [])
    assert short.model.max_denoising_steps == 128 and short.model.time_scale == 100.0


def test_composition_types_the_policy_keys_and_keeps_the_model_block_closed():
    from agent.config import check_overrides

    folder = CFG_ROOT / "gym/pretrain/hopper-medium-v2"
    with pytest.raises(ConfigCompositionException) as info:
        compose(folder, "pre_reflow_mlp", ["model.denoising_steps=abc"])
    assert "could not be converted to Integer" in str(info.value.__cause__)
    with pytest.raises(ConfigError) as err:
        check_overrides(folder, "pre_diffusion_mlp", ["model.min_sampling_denoising_std=high"])
    assert str(err.value).startswith("model.min_sampling_denoising_std: Value 'high' of type 'str' could not be")
    with pytest.raises(ConfigError, match=r"^model.denoising_step is not a key of this config; did you mean"):
        check_overrides(folder, "pre_diffusion_mlp", ["model.denoising_step=5"])
    assert compose(folder, "pre_gaussian_mlp", ["model.ent_coef=0.5"]).model.ent_coef == 0.5


@pytest.mark.parametrize(
    ("family", "keys", "message"),
    [
        ("diffusion", {"denoising_steps": 5, "ft_denoising_steps": 6}, "ft_denoising_steps=6 must be in [0, "),
        ("diffusion", {"use_ddim": True}, "use_ddim=True needs ddim_steps"),
        ("flow", {"time_sampling": "normal"}, "time_sampling must be one of ('uniform', 'beta'), got 'normal'"),
        ("shortcut", {"max_denoising_steps": 96}, "max_denoising_steps must be a power of two >= 2, got 96"),
        ("exact", {"use_ddim": True, "ddim_steps": 5}, "ExactDiffusion integrates the VP SDE's ODE"),
        ("gaussian", {"horizon_steps": 0}, "horizon_steps and action_dim must be >= 1, got 0, 2"),
        ("gmm", {"action_dim": 0}, "horizon_steps and action_dim must be >= 1, got 4, 0"),
    ],
)
def test_the_policy_keys_check_their_values_in_post_init(family, keys, message):
    from model.diffusion.diffusion import DiffusionKeys
    from model.diffusion.exact import ExactDiffusionKeys
    from model.flow.flow import FlowKeys
    from model.flow.shortcut import ShortcutKeys
    from model.gaussian.model import GaussianKeys
    from model.gmm.model import GMMKeys

    cls = {
        "diffusion": DiffusionKeys,
        "flow": FlowKeys,
        "shortcut": ShortcutKeys,
        "exact": ExactDiffusionKeys,
        "gaussian": GaussianKeys,
        "gmm": GMMKeys,
    }[family]
    dims = {"horizon_steps": 4, "action_dim": 2} | ({} if family in ("gaussian", "gmm") else {"obs_dim": 3})
    with pytest.raises(ValueError) as info:
        cls(**(dims | keys))
    assert str(info.value).startswith(message)


def test_a_policy_is_built_from_its_keys_positionally_or_by_name():
    from model.diffusion.diffusion import DiffusionKeys, DiffusionModel
    from model.diffusion.mlp_diffusion import DiffusionMLP

    net = DiffusionMLP(2, 4, 3, mlp_dims=(8,))
    by_position = DiffusionModel(net, 4, 3, 2, 5)
    by_name = DiffusionModel(net, horizon_steps=4, obs_dim=3, action_dim=2, denoising_steps=5)
    assert by_position.keys == by_name.keys == DiffusionKeys(4, 3, 2, denoising_steps=5)
    assert (by_name.denoising_steps, by_name.randn_clip_value, by_name.min_logprob_denoising_std) == (5, 10.0, 0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'denoising_step'"):
        DiffusionModel(net, horizon_steps=4, obs_dim=3, action_dim=2, denoising_step=5)
