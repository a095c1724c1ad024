"""The installable package: the wheel's package list, its configs, and `dppo-run` from an empty directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.cli import resolve_config_dir
from agent.config import CFG_ROOT, REPO_ROOT


def test_the_listed_packages_are_the_source_trees_packages():
    """pyproject lists the packages by hand (to map `agent.cfg` onto cfg/); a new package must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("agent", "model", "env")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert listed == found | {"agent.cfg"}


def test_a_cfg_config_dir_is_read_against_the_installed_configs_when_the_working_directory_has_none(tmp_path):
    installed = str(CFG_ROOT / "gym/pretrain/hopper-medium-v2")
    argv = ["--config-name=x", "--config-dir=cfg/gym/pretrain/hopper-medium-v2", "a=1"]
    assert resolve_config_dir(argv, cwd=tmp_path) == ["--config-name=x", f"--config-dir={installed}", "a=1"]
    assert resolve_config_dir(["-cd", "cfg/gym/pretrain/hopper-medium-v2"], cwd=tmp_path) == [f"-cd={installed}"]
    # a working directory with that folder, an absolute path and a folder the package does not have: unchanged
    (tmp_path / "cfg/gym/pretrain/hopper-medium-v2").mkdir(parents=True)
    assert resolve_config_dir(argv, cwd=tmp_path) == argv
    assert resolve_config_dir([f"--config-dir={installed}"], cwd=tmp_path) == [f"--config-dir={installed}"]
    assert resolve_config_dir(["--config-dir=cfg/nope"], cwd=tmp_path / "x") == ["--config-dir=cfg/nope"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the tracked files")
def test_the_wheel_installs_and_dppo_run_pretrains_from_an_empty_directory(tmp_path):
    """Build the wheel from a copy of the tracked sources (no build files in the checkout), install it in a fresh
    venv (dependencies from this interpreter), and run a 2-epoch pretraining from a directory without cfg/."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for rel in tracked.stdout.splitlines():
        if rel.split("/")[0] in ("agent", "model", "env", "cfg") or rel in ("pyproject.toml", "README.md"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(dist)], check=True)
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agent/cfg/gym/pretrain/hopper-medium-v2/pre_diffusion_mlp.yaml" in names
    assert "agent/cfg/robomimic/env_meta/lift.json" in names
    assert "agent/cfg/common/run.yaml" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    vpython = venv / "bin" / "python"
    subprocess.run([str(vpython), *pip[1:], "install", "--no-deps", str(wheel)], check=True)
    where = subprocess.run(
        [str(vpython), "-c", "import agent.config as c; print(c.CFG_ROOT)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()) == venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}" / (
        "site-packages/agent/cfg"
    )

    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "script/dataset/generate_avoid.py"), "--variants", "m2"]
        + ["--num-episodes", "6", "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(
        [str(venv / "bin" / "dppo-run"), "--config-name=pre_diffusion_mlp", "--config-dir=cfg/d3il/pretrain/avoid_m2"]
        + [f"data_dir={data}", "train.n_epochs=2", "device=cpu", "wandb=null"],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert list(empty.glob("log/d3il-pretrain/*/*/checkpoint/state_2.pt"))
