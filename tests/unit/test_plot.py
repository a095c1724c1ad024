"""The sweep plot reads run folders, groups by task and algorithm, and tabulates final means over seeds."""

import json

import pytest

from script.plot.plot_runs import main


def _run(folder, task, algo, seed, finals):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"env_name: {task}\nname: {task}_{algo}\nseed: {seed}\n")
    rows = [{"step": i, "train/env_steps": 100 * i, "eval/success_rate": v} for i, v in enumerate(finals)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_sweep_plot_and_table(tmp_path, capsys):
    for seed, last in enumerate([0.5, 0.7, 0.9]):
        _run(tmp_path / f"ppo{seed}", "can", "ft_ppo_diffusion_mlp", seed, [0.1, 0.3, last])
    for seed, last in enumerate([0.2, 0.4]):
        _run(tmp_path / f"dql{seed}", "can", "ft_dql_diffusion_mlp", seed, [0.1, 0.2, last])
    out = tmp_path / "sweep.png"
    main(["--sweep", str(tmp_path), "--metric", "eval/success_rate", "--out", str(out)])
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "sweep.md").read_text()
    assert "| can | ft_ppo_diffusion_mlp | 3 | 0.700 ± 0.163 |" in table
    assert "| can | ft_dql_diffusion_mlp | 2 | 0.300 ± 0.100 |" in table


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        main(["--sweep", str(tmp_path)])
