"""The quick start's pipeline end to end in its short form (the full one is `make quickstart`)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_quickstart_fast(tmp_path):
    out = subprocess.run(
        [sys.executable, "script/quickstart.py", "--fast", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for family in ("diffusion", "reflow"):
        for label in ("pretrained", "finetuned"):
            result = json.loads((tmp_path / family / f"eval_{label}" / "eval_result.json").read_text())
            assert result["n_episodes"] == 200 and 0.0 <= result["success_rate"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 5000
    table = out.stdout.splitlines()[-7:-2]
    assert [line.split()[0] for line in table] == ["policy", "diffusion", "diffusion", "reflow", "reflow"], table
    assert "fine-tuned (DPPO)" in table[2] and "fine-tuned (ReFlow PPO)" in table[4]
