"""The policy protocol (`model.base.Policy`): every family declares its optional capabilities explicitly, the
algorithms read them as members, and a non-policy `model._target_` is refused when the policy is built."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from agent.errors import ConfigError
from agent.finetune import awr, dipo, dql, idql, qsm
from agent.finetune.loading import build_policy, is_diffusion
from agent.finetune.replay import ReplayAlgorithm
from model.base import Policy
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.eta import EtaFixed
from model.diffusion.mlp_diffusion import DiffusionMLP
from model.gaussian.mlp import GaussianMLP
from model.gaussian.model import GaussianModel
from model.gmm.mlp import GMMMLP
from model.gmm.model import GMMModel

DO, DA, TA = 3, 2, 4


def diffusion(**kw) -> DiffusionModel:
    return DiffusionModel(DiffusionMLP(DA, TA, DO, time_dim=8, mlp_dims=(16,)), TA, DO, DA, denoising_steps=5, **kw)


def gaussian() -> GaussianModel:
    return GaussianModel(GaussianMLP(DA, TA, DO, mlp_dims=[16]), TA, DA)


def gmm() -> GMMModel:
    return GMMModel(GMMMLP(DA, TA, DO, mlp_dims=[16], num_modes=2), TA, DA)


def cond(b: int = 5) -> dict[str, torch.Tensor]:
    return {"state": torch.zeros(b, 1, DO)}


@pytest.mark.parametrize("make", [gaussian, gmm], ids=["gaussian", "gmm"])
def test_single_step_families_declare_no_base_no_eta_and_refuse_base_sampling(make):
    policy = make()
    assert isinstance(policy, Policy) and not is_diffusion(policy)
    assert policy.ft_denoising_steps == 0 and policy.n_chain_steps == 1
    assert not policy.has_base_policy and policy.eta_parameters() == []
    assert policy.entropy(cond()).shape == (5,)
    with pytest.raises(ValueError, match="keeps no frozen base policy"):
        policy.sample(cond(), use_base_policy=True)


def test_diffusion_declares_its_base_policy_and_eta_parameters_only_when_learned():
    plain = diffusion(ft_denoising_steps=2)
    assert isinstance(plain, Policy) and is_diffusion(plain)
    assert plain.has_base_policy and plain.ft_denoising_steps == plain.n_chain_steps == 2
    assert plain.eta_parameters() == [] and plain.entropy(cond()) is None
    torch.manual_seed(0)
    base = plain.sample(cond(), deterministic=True, use_base_policy=True).actions
    assert base.shape == (5, TA, DA)

    eta = EtaFixed(base_eta=1.0, min_eta=0.1, max_eta=1.5)
    learned = diffusion(ft_denoising_steps=2, use_ddim=True, ddim_steps=5, eta=eta, learn_eta=True)
    assert {id(p) for p in learned.eta_parameters()} == {id(p) for p in eta.parameters()}
    assert {id(p) for p in learned.eta_parameters()} <= {id(p) for p in learned.trainable_parameters()}


def test_a_policy_without_an_abstract_member_cannot_be_built():
    class Incomplete(Policy):
        n_chain_steps = 1

        def loss(self, actions, cond):
            return actions.sum()

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


@pytest.mark.parametrize("algorithm", [dql.DQL, qsm.QSM, dipo.DIPO, idql.IDQL, awr.AWR], ids=lambda c: c.__name__)
def test_selects_actions_is_declared_exactly_where_act_is_overridden(algorithm):
    assert issubclass(algorithm, ReplayAlgorithm)
    assert algorithm.selects_actions == (algorithm.act is not ReplayAlgorithm.act)


def test_build_policy_refuses_a_target_that_is_not_a_policy():
    cfg = OmegaConf.create({"model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}})
    with pytest.raises(ConfigError, match=r"model._target_=torch.nn.Linear builds a Linear, not a policy"):
        build_policy(cfg)
