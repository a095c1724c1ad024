"""Compose a config, check it, build the agent it names (`_target_`) and run it (see agent/cli.py).

    python script/run.py --config-name=pre_diffusion_mlp --config-dir=cfg/gym/pretrain/hopper-medium-v2 \
        train.n_epochs=10 device=cpu wandb=null
    python script/run.py -m --config-name=... --config-dir=... seed=0,1,2

The same command as `dppo-run` (the console entry point of an installed package).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from agent.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
