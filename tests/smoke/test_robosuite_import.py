"""robosuite's import-time notices about optional parts (a private macro file, robosuite_models, the mink IK) and
PyOpenGL's accelerator line are silenced; robosuite's other warnings still show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("robosuite")
REPO = Path(__file__).resolve().parents[2]
IMPORT = """
import logging
logging.basicConfig(level=logging.INFO)
{before}
import OpenGL.acceleratesupport  # logs "No OpenGL_accelerate module loaded" at INFO when the accelerator is absent
logging.getLogger("robosuite_logs").warning("a warning of robosuite's own")
"""


def stderr_of(before: str) -> str:
    code = IMPORT.format(before=before)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_import_notices_are_silenced_and_other_warnings_kept():
    quiet = stderr_of("from env.suites.robomimic import import_robosuite\nimport_robosuite()")
    for notice in ("No private macro file", "robosuite_models", "mink-based", "setup_macros", "OpenGL_accelerate"):
        assert notice not in quiet, quiet
    assert "a warning of robosuite's own" in quiet
    loud = stderr_of("import robosuite")  # what a plain import prints (the test would see a silenced one)
    assert "robosuite_models" in loud and "mink-based" in loud
