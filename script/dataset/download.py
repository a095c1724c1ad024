"""Download DPPO's published datasets and pre-trained checkpoints (Google Drive, via gdown), with caching.

    python script/dataset/download.py --task hopper-medium-v2        # -> $DPPO_DATA_DIR/gym/hopper-medium-v2/
    python script/dataset/download.py --task can-img                 # -> $DPPO_DATA_DIR/robomimic/can-img/
    python script/dataset/download.py --task avoid_m1 --checkpoints  # + pre-trained policies in $DPPO_LOG_DIR
    python script/dataset/download.py --list                         # what is known

Files land where the configs read them: `<data>/<suite>/<task>/{train.npz, normalization.npz}` and, for
checkpoints, `<log>/<suite>-pretrain/<pretrain_name>/<run>/checkpoint/state_<N>.pt`, inside the folder the
fine-tuning and eval configs' default `base_policy_path` names (data = $DPPO_DATA_DIR or data/, log = $DPPO_LOG_DIR
or log/); the few that need a config override say so. They are DPPO-format checkpoints, which
agent/finetune/loading.py translates on load. Present files are not fetched again (use --force). Without a network, or
when Google Drive refuses, the script stops with one line naming what failed. Tasks with no published files
(e.g. kitchen) say how to make the data locally instead.

Integrity: Google Drive publishes no checksums, so the first download cannot be verified; the sha256 of each file
fetched is recorded beside it (`<file>.sha256`, agent/integrity.py) and checked whenever the file is used again (a
cached download here, a checkpoint or dataset load in a run), so a file changed after its download is refused.

The Google Drive addresses are the ones DPPO publishes (irom-lab/dppo, script/download_url.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python script/dataset/download.py` from a checkout
    sys.path.insert(0, str(REPO))

from agent.errors import DataError  # noqa: E402
from agent.integrity import record_checksum, verify_checksum  # noqa: E402
from script.dataset.common import data_dir, log_dir, setup_logging  # noqa: E402

log = logging.getLogger("download")

DRIVE_FOLDER = "https://drive.google.com/drive/folders/{}"
DRIVE_FILE = "https://drive.google.com/file/d/{}/view"
DATASET_FILES = ("train.npz", "normalization.npz")


class DownloadError(RuntimeError):
    """A download that cannot be done (offline, unknown task, Drive refused); the message is one line."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a task's published data lives.

    Attributes:
        folder_id: Google Drive folder holding train.npz (and usually normalization.npz); None = not published.
        normalization_id: Google Drive file id of normalization.npz; None = not published separately.
        how_to_make: what to do instead when nothing is published.
        note: a caveat logged after downloading.
    """

    folder_id: str | None
    normalization_id: str | None = None
    how_to_make: str = ""
    note: str = ""


AVOID_NOTE = (
    "DPPO's avoid data were recorded in D3IL's MuJoCo 'avoiding' task; env/suites/avoid.py is a planar stand-in "
    "with its own geometry, so for it use `python script/dataset/generate_avoid.py`"
)

# (suite, task) -> published dataset. Ids from DPPO's script/download_url.py (get_dataset_download_url and
# get_normalization_download_url). D3IL "avoid" modes: m1 = d56_r12, m2 = d57_r12, m3 = d58_r12.
DATASETS: dict[tuple[str, str], DatasetSource] = {
    ("gym", "hopper-medium-v2"): DatasetSource(
        "18Ti-92XVq3sE24K096WAxjC_SCCngeHd", "1HHZ2X6r5io6hjG-MHVFFoPMJV2fJ3lis"
    ),
    ("gym", "walker2d-medium-v2"): DatasetSource(
        "1BJu8NklriunDHsDrLT6fEpcro3_2IPFf", "1NSX7t3DFKaBj5HNpv91Oo5h6oXTk0zoo"
    ),
    ("gym", "halfcheetah-medium-v2"): DatasetSource(
        "1Drel26tiuQ9oD3YNf1eyy0UVaf5SQj-U", "1LlwCMfy1b5e8jSx99CV3lWhcrQWrI2Jm"
    ),
    ("d3il", "avoid_m1"): DatasetSource(
        "1ZAPvLQwv2y4Q98UDVKXFT4fvGF5yhD_o", "1PubKaPabbiSdWYpGmouDhYfXp4QwNHFG", note=AVOID_NOTE
    ),
    ("d3il", "avoid_m2"): DatasetSource(
        "1wyJi1Zbnd6JNy4WGszHBH40A0bbl-vkd", "1Hoohw8buhsLzXoqivMA6IzKS5Izlj07_", note=AVOID_NOTE
    ),
    ("d3il", "avoid_m3"): DatasetSource(
        "1mNXCIPnCO_FDBlEj95InA9eWJM2XcEEj", "1qt7apV52C9Tflsc-A55J6uDMHzaFa1wN", note=AVOID_NOTE
    ),
    ("robomimic", "lift"): DatasetSource("1lbXgMKBTAiFdJqPZqWXpwjEyrVW16MBu", "1d3WjwRds-7I5bBFpZuY27OT9ycb8r_QM"),
    ("robomimic", "lift-img"): DatasetSource("1H-UncdzHx6wd5NWVzrQyftfGls7KGz1O", "15GnKDIK8VasvUHahcvEeK_uEs1J9i0ja"),
    ("robomimic", "can"): DatasetSource("1J1qSvsDEf40jnMZY9W0r6ww--E3MdmK3", "14FxHk9zQ-5ulAO26a6xrdvc-gRkL36FR"),
    ("robomimic", "can-img"): DatasetSource("1VGp_5xXXb1-GJutdSc6AZSzXNk-6_vRz", "1APAB6W10ECaNVVL72F0C2wC6oJhhbjWX"),
    ("robomimic", "square"): DatasetSource("1mVVNOJ6wt2EXoapF7PKkcqxbsB9gvK-B", "1FFMqWVv0145OJjbA_iglkWywmdK22Za-"),
    ("robomimic", "square-img"): DatasetSource(
        "1-aGqVeKLIzJCEst8p0ZTjfjkrXFfJLxa", "1jq5atfHdu-ZMQ8YaFjwcctbJESBYDgP8"
    ),
    ("robomimic", "transport"): DatasetSource("1EVHmFx-YdX4MEE1EjwduVayvaH9vvqvK", "1EmC80gIgLoqQ8kRPH5r0mDVqX6NqHO3p"),
    ("robomimic", "transport-img"): DatasetSource(
        "1cOkAZQmmETYEPFrnnX0EuD6mv0kUfMO2", "1LBgvIacNzbXCZXWKYanddqiotevG3hmA"
    ),
    # DPPO publishes no kitchen data: its configs read D4RL's kitchen datasets converted locally.
    **{
        ("gym", f"kitchen-{kind}-v0"): DatasetSource(
            None,
            None,
            f"convert D4RL's kitchen-{kind}-v0 dictionary with "
            f"`python script/dataset/convert_d4rl.py --input <file> --task kitchen-{kind}-v0`",
        )
        for kind in ("complete", "partial", "mixed")
    },
}


@dataclass(frozen=True)
class CheckpointSource:
    """A published pre-trained policy and where it lands under DPPO_LOG_DIR.

    The destination is `<suite>-pretrain/<pretrain_name>/<run>/checkpoint/state_<state>.pt`: `pretrain_name` is the
    fine-tuning and evaluation configs' `${pretrain_name}` (`<env_name>_pre_<policy>_ta<H>[_td<K>]`), so their default
    `base_policy_path` (`${log_dir}/<suite>-pretrain/${pretrain_name}`, an experiment folder whose newest run is
    used) finds the file with no override. DPPO's own avoid names (`avoid_d56_r12_...`) become the configs'
    (`avoid_m1_...`).

    Attributes:
        suite: gym, robomimic or d3il.
        task: the dataset name it belongs to (`hopper-medium-v2`, `can-img`, `avoid_m1`).
        pretrain_name: the experiment folder name.
        run: the dated run folder of the published file.
        state: N of `state_<N>.pt` (DPPO's pretraining epoch).
        file_id: Google Drive file id.
        overrides: config overrides the fine-tuning/eval configs need to use it (their defaults differ).
    """

    suite: str
    task: str
    pretrain_name: str
    run: str
    state: int
    file_id: str
    overrides: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """The destination relative to DPPO_LOG_DIR."""
        return f"{self.suite}-pretrain/{self.pretrain_name}/{self.run}/checkpoint/state_{self.state}.pt"

    @property
    def policy(self) -> str:
        """The policy name of the configs (`diffusion_mlp`, `gaussian_mlp_img`, ...)."""
        return re.sub(r"_ta\d+(_td\d+)?$", "", self.pretrain_name.split("_pre_", 1)[1])

    @property
    def finetune_dir(self) -> str:
        """`cfg/<suite>/finetune/<dir>` and `cfg/<suite>/eval/<dir>` of the task (gym drops `-medium`)."""
        if self.suite == "gym":
            return self.task.replace("-medium-", "-")
        return self.task.removesuffix("-img")

    def finetune_command(self) -> str:
        """The DPPO fine-tuning command that starts from this checkpoint."""
        extra = "".join(f" {o}" for o in self.overrides)
        return (
            f"python script/run.py --config-name=ft_ppo_{self.policy} "
            f"--config-dir=cfg/{self.suite}/finetune/{self.finetune_dir}{extra}"
        )


def _ckpts(suite: str, task: str, env_name: str, items: list[tuple[Any, ...]]) -> list[CheckpointSource]:
    """Entries `(policy tag, run, state, file id[, overrides])`; the tag is `pretrain_name` after `_pre_`."""
    return [CheckpointSource(suite, task, f"{env_name}_pre_{item[0]}", *item[1:]) for item in items]


# DPPO trained its state-based transport Gaussian/GMM policies with 8-step chunks; this toolkit's transport
# Gaussian/GMM configs default to horizon_steps=4, so these checkpoints need the override.
TRANSPORT_TA8 = ("horizon_steps=8", "act_steps=8")

# Ids from DPPO's script/download_url.py (get_checkpoint_download_url); runs and N are DPPO's file names.
CHECKPOINTS: list[CheckpointSource] = [
    *_ckpts(
        "gym",
        "hopper-medium-v2",
        "hopper-medium-v2",
        [
            ("diffusion_mlp_ta4_td20", "2024-06-12_23-10-05", 3000, "1uV3beg2YuBRh11t7jnRsyd_M9bsFGOkA"),
        ],
    ),
    *_ckpts(
        "gym",
        "walker2d-medium-v2",
        "walker2d-medium-v2",
        [
            ("diffusion_mlp_ta4_td20", "2024-06-12_23-06-12", 3000, "1StopetttozWba4l9u0VT_JW1rYe6kJx2"),
        ],
    ),
    *_ckpts(
        "gym",
        "halfcheetah-medium-v2",
        "halfcheetah-medium-v2",
        [
            ("diffusion_mlp_ta4_td20", "2024-06-12_23-04-42", 3000, "1o9ryyeZQAsaB4ffUTCJkIaGCi0frL3G4"),
        ],
    ),
    *_ckpts(
        "d3il",
        "avoid_m1",
        "avoid_m1",
        [
            ("diffusion_mlp_ta4_td20", "2024-07-06_22-50-07", 10000, "1JdEOG0KsCA9EX9zq09DE0xkTB4xy6DNp"),
            ("gaussian_mlp_ta4", "2024-07-07_01-35-48", 10000, "138wEi_rVV5HpcwgH6_3BlXQ1dhgZN05L"),
            ("gmm_mlp_ta4", "2024-07-10_14-30-00", 10000, "1krvEINP6UBfnJG9bEge53h3MNJkTQXe_"),
        ],
    ),
    *_ckpts(
        "d3il",
        "avoid_m2",
        "avoid_m2",
        [
            ("diffusion_mlp_ta4_td20", "2024-07-07_13-12-09", 15000, "1wAmRHzRZ4O5z_ZWDhVg5JFZbugo4cHKA"),
            ("gaussian_mlp_ta4", "2024-07-07_02-15-50", 10000, "1hf_647bJ0EMRhArsfxStSkhgkGaWGhmD"),
            ("gmm_mlp_ta4", "2024-07-10_15-44-32", 10000, "1CE4AcNJp2UITIHpuLUwxp7cDH8Y8jsYC"),
        ],
    ),
    *_ckpts(
        "d3il",
        "avoid_m3",
        "avoid_m3",
        [
            ("diffusion_mlp_ta4_td20", "2024-07-07_13-54-54", 15000, "1w5X1lJZd0wI6E2XRdj839TqJ_9EziGRx"),
            ("gaussian_mlp_ta4", "2024-07-07_13-11-49", 10000, "1YIVEN0Ykica9dj_DxxPrB4QJLgv-Ne0N"),
            ("gmm_mlp_ta4", "2024-07-10_17-01-50", 10000, "174tadrqjfxJdOgsMjNbg53goZtIkpW3f"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "lift",
        "lift",
        [
            ("diffusion_unet_ta4_td20", "2024-06-29_02-49-45", 8000, "1T-NGgBmT-UmcVWADygXj873IyWLewvsU"),
            ("diffusion_mlp_ta4_td20", "2024-06-28_14-47-58", 5000, "1Ngr-DNxoB9XNCZ2O-NF5p60NzmYlzmWG"),
            ("gaussian_mlp_ta4", "2024-06-28_14-48-24", 5000, "157x5_XJy3ZyaPz_7Vr_opXAZ_mPvlmhp"),
            ("gaussian_transformer_ta4", "2024-06-28_14-49-23", 5000, "1Z_C8ureDDPXqpDUaRMVKBt3VgfZlIQdE"),
            ("gmm_mlp_ta4", "2024-06-28_15-30-32", 5000, "1wFvBoIOaCJVibqEIYSjJxAbxjGkH7RMk"),
            ("gmm_transformer_ta4", "2024-06-28_14-51-23", 5000, "1w_3WOXS51debWc1ShgaO2VQx49dj9ky2"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "lift-img",
        "lift",
        [
            ("diffusion_mlp_img_ta4_td100", "2024-07-30_22-24-35", 2500, "19hqNicwKKKDrlS5UMr-FLRu51EAW8Z51"),
            ("gaussian_mlp_img_ta4", "2024-07-28_23-00-48", 500, "1Uae7K3Hv9XzaAGljG2fjsxYyOEgL03zv"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "can",
        "can",
        [
            ("diffusion_unet_ta4_td20", "2024-06-29_02-49-45", 8000, "1s346KCe2aar_tXX7u8rzjRF3kpwVpH5c"),
            ("diffusion_mlp_ta4_td20", "2024-06-28_13-29-54", 5000, "1L1ZLD1u1Y1YJmRLGzScXbQ02wGS-_cWo"),
            ("gaussian_mlp_ta4", "2024-06-28_13-31-00", 5000, "1bA-A0p0KnHwrVO3MqjuYdV3dZuuZICMy"),
            ("gaussian_transformer_ta4", "2024-06-28_13-42-20", 5000, "1cGf7s8aS5grZsGRb5PYZiPogcPRr_lrf"),
            ("gmm_mlp_ta4", "2024-06-28_13-32-19", 5000, "1KVx8-KICiIHstcjsvhPlQc_pZZ6RxXpd"),
            ("gmm_transformer_ta4", "2024-06-28_13-43-21", 5000, "1xSgwGG40zdoO2DDSM79l0rMHeNmaifnq"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "can-img",
        "can",
        [
            ("diffusion_mlp_img_ta4_td100", "2024-07-30_22-23-55", 5000, "1siIKDGVHld3ZH8vDqgu9iE5H9KoaYq_Z"),
            ("gaussian_mlp_img_ta4", "2024-07-28_21-54-40", 1000, "16vUUyVO9DvnDyPtSGiZx4iQP4JxuSAoS"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "square",
        "square",
        [
            ("diffusion_unet_ta4_td20", "2024-06-29_02-48-45", 8000, "11IEgQe0LFI23hn1Cwf6Z_YfJdDilVc0z"),
            ("diffusion_mlp_ta4_td20", "2024-07-10_01-46-16", 8000, "1lP9mNe2AxMigfOywcaHOOR7FxQ-KR_Ee"),
            ("gaussian_mlp_ta4", "2024-06-28_15-02-32", 5000, "1rETiyXLz7YgYoHKwLEZa7dFabu4gfJR8"),
            ("gaussian_transformer_ta4", "2024-06-28_15-02-39", 5000, "1JJQ7KbRWWBB09PLwNRriAUEAl9vjFeCW"),
            ("gmm_mlp_ta4", "2024-06-28_15-03-08", 5000, "10ujnnOk2Pn-yjE7iW9-RYbApo_aKiNRq"),
            ("gmm_transformer_ta4", "2024-06-28_15-03-15", 5000, "1LczXhgeNtQfqySsfGNbbviPrlLwyh-E3"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "square-img",
        "square",
        [
            ("diffusion_mlp_img_ta4_td100", "2024-07-30_22-27-34", 4000, "1miud5SX41xjPoW8yqClRhaFx0Q7EWl3V"),
            ("gaussian_mlp_img_ta4", "2024-07-30_18-44-32", 4000, "1myB6FOAmt6c6x3ScGKXRULgx826tZVS4"),
        ],
    ),
    *_ckpts(
        "robomimic",
        "transport",
        "transport",
        [
            ("diffusion_unet_ta16_td20", "2024-07-04_02-20-53", 8000, "1MNGT8j9x1uudugGUcia-xwP_7f7xVY4K"),
            ("diffusion_mlp_ta8_td20", "2024-07-08_11-18-59", 8000, "1240FmcDPg_VyXReEtePjBN4MML-OT21C"),
            ("gaussian_mlp_ta8", "2024-07-10_01-50-52", 5000, "1NOHDNHu1sTabxBd4DZrSrTyX9l1I2GuO", TRANSPORT_TA8),
            (
                "gaussian_transformer_ta8",
                "2024-06-28_15-18-16",
                5000,
                "1hnt9lX5bg82iFFsAk5FY3TktPXsAhUFU",
                TRANSPORT_TA8,
            ),
            ("gmm_mlp_ta8", "2024-07-10_01-51-21", 5000, "1da9yLIu5ahq-ZgIIsG7wqehA5VopFTnt", TRANSPORT_TA8),
            ("gmm_transformer_ta8", "2024-06-28_15-18-43", 5000, "1c0S7WX-U1Kn6n-wWZEQSR1alLPW2eZmi", TRANSPORT_TA8),
        ],
    ),
    *_ckpts(
        "robomimic",
        "transport-img",
        "transport",
        [
            ("diffusion_mlp_img_ta8_td100", "2024-07-30_22-30-06", 8000, "1_UmjNv27_w49XC_EO1WexgreJmC0SEdF"),
            ("gaussian_mlp_img_ta8", "2024-07-30_21-39-34", 5000, "1XYOIwOEgOVoUdMmxWuBRAcA5BOS777Kc"),
        ],
    ),
]

# How to make the data locally, per suite, for the "no published files" / offline messages.
LOCAL_RECIPES = {
    "gym": "convert a D4RL file with `python script/dataset/convert_d4rl.py --input <file> --task <task>`",
    "robomimic": "generate it with `python script/dataset/generate_robomimic.py --task <task>`",
    "d3il": "generate it with `python script/dataset/generate_avoid.py`",
}


def resolve_task(task: str, suite: str | None = None) -> tuple[str, str]:
    """(suite, task) of a known dataset, the suite inferred when not given; DownloadError if unknown."""
    matches = [key for key in DATASETS if key[1] == task and (suite is None or key[0] == suite)]
    if not matches:
        known = ", ".join(sorted(f"{s}/{t}" for s, t in DATASETS))
        raise DownloadError(f"no published dataset is known for task {task!r}; known: {known}")
    if len(matches) > 1:
        raise DownloadError(f"task {task!r} exists in several suites {matches}; pass --suite")
    return matches[0]


def dataset_cached(target: Path) -> bool:
    """True if train.npz and normalization.npz are both present in `target`."""
    return all((target / name).is_file() for name in DATASET_FILES)


def verify_cached(path: Path) -> None:
    """Check a present file against the sha256 recorded at its download (see the module docstring).

    Raises:
        DownloadError: the file changed since it was downloaded.
    """
    try:
        verify_checksum(path)
    except DataError as exc:
        raise DownloadError(str(exc)) from exc


def _gdown() -> Any:
    try:
        import gdown
    except ImportError as exc:
        raise DownloadError("gdown is not installed: `pip install gdown` (or `pip install -e .[download]`)") from exc
    return gdown


def _offline_hint(what: str, url: str, exc: BaseException | None, suite: str) -> DownloadError:
    if exc is None:
        reason = "gdown returned nothing"
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
        offline = "NameResolutionError" in text or "Max retries exceeded" in text
        reason = "no network connection" if offline else f"{type(exc).__name__}: {text[:120]}"
    recipe = LOCAL_RECIPES.get(suite, "")
    return DownloadError(
        f"could not download {what} from {url} ({reason}); check the network or the Google Drive quota"
        + (f", or {recipe}" if recipe else "")
    )


def download_dataset(
    task: str,
    suite: str | None = None,
    root: str | os.PathLike | None = None,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Fetch a task's published train.npz + normalization.npz into `<root>/<suite>/<task>/` (cached).

    Returns the folder. Raises DownloadError (one line) when the task is unknown, unpublished or unreachable.
    """
    suite, task = resolve_task(task, suite)
    source = DATASETS[(suite, task)]
    target = data_dir(root) / suite / task
    if dataset_cached(target) and not force:
        for name in DATASET_FILES:
            verify_cached(target / name)
        log.info("%s/%s already present in %s", suite, task, target)
        return target
    if source.folder_id is None:
        raise DownloadError(f"no published files for {suite}/{task}: {source.how_to_make}")
    gdown = _gdown()
    target.mkdir(parents=True, exist_ok=True)
    url = DRIVE_FOLDER.format(source.folder_id)
    log.info("downloading %s/%s from %s", suite, task, url)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target) as tmp:
        try:
            files = gdown.download_folder(url=url, output=tmp, quiet=quiet, use_cookies=False)
        except Exception as exc:  # gdown raises many kinds (requests, its own); all mean "not fetched"
            files, error = None, exc
        else:
            error = None
        if not files:
            _remove_if_empty(target, keep=tmp)
            raise _offline_hint(f"{suite}/{task}", url, error, suite) from error
        fetched = sorted(Path(tmp).rglob("*.npz"))
        for path in fetched:
            dest = target / path.name
            if force or not dest.exists():
                shutil.move(str(path), dest)
                record_checksum(dest)
    norm = target / "normalization.npz"
    folder_had_norm = any(p.name == norm.name for p in fetched)
    if source.normalization_id is not None and not folder_had_norm and (force or not norm.is_file()):
        _download_file(source.normalization_id, norm, f"{suite}/{task} normalization", suite, quiet)
    missing = [name for name in DATASET_FILES if not (target / name).is_file()]
    if missing:
        raise DownloadError(f"downloaded {suite}/{task} but {missing} were not in the published folder")
    if source.note:
        log.warning("%s/%s: %s", suite, task, source.note)
    return target


def _remove_if_empty(folder: Path, keep: str) -> None:
    """Remove a folder this script created if it holds nothing but the temporary download folder."""
    leftovers = [p for p in folder.iterdir() if str(p) != keep]
    if not leftovers:
        shutil.rmtree(keep, ignore_errors=True)
        folder.rmdir()


def _download_file(file_id: str, dest: Path, what: str, suite: str, quiet: bool) -> Path:
    gdown = _gdown()
    url = DRIVE_FILE.format(file_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        out = gdown.download(url=url, output=str(tmp), quiet=quiet, fuzzy=True)
    except Exception as exc:  # see download_dataset
        tmp.unlink(missing_ok=True)
        raise _offline_hint(what, url, exc, suite) from exc
    if not out or not tmp.is_file():
        raise _offline_hint(what, url, None, suite)
    os.replace(tmp, dest)
    record_checksum(dest)
    return dest


def checkpoints_for(task: str, suite: str | None = None) -> list[CheckpointSource]:
    """Published checkpoints of a task (the `-img` variants belong to the `<task>-img` dataset name)."""
    return [c for c in CHECKPOINTS if c.task == task and (suite is None or c.suite == suite)]


def download_checkpoint(
    source: CheckpointSource, root: str | os.PathLike | None = None, force: bool = False, quiet: bool = False
) -> Path:
    """Fetch one checkpoint to `<root>/<source.path>` (root = $DPPO_LOG_DIR or log/); cached."""
    dest = log_dir(root) / source.path
    if dest.is_file() and not force:
        verify_cached(dest)
        log.info("checkpoint already present: %s", dest)
        return dest
    log.info("downloading checkpoint %s", source.path)
    return _download_file(source.file_id, dest, f"checkpoint {source.path}", source.suite, quiet)


def list_known() -> list[str]:
    """Lines describing every known dataset and its checkpoints."""
    lines = []
    for (suite, task), src in sorted(DATASETS.items()):
        n = len(checkpoints_for(task, suite))
        status = "published" if src.folder_id else "not published"
        lines.append(f"{suite}/{task}: dataset {status}, {n} checkpoint(s)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", nargs="+", help="task name(s), e.g. hopper-medium-v2 can can-img avoid_m1")
    p.add_argument("--suite", choices=["gym", "robomimic", "d3il"], help="suite, when a task name is ambiguous")
    p.add_argument("--checkpoints", action="store_true", help="also fetch the task's pre-trained checkpoints")
    p.add_argument("--no-data", action="store_true", help="skip the dataset (with --checkpoints)")
    p.add_argument("--data-dir", help="dataset root (default: $DPPO_DATA_DIR or data/)")
    p.add_argument("--log-dir", help="checkpoint root (default: $DPPO_LOG_DIR or log/)")
    p.add_argument("--force", action="store_true", help="download again even if the files exist")
    p.add_argument("--list", action="store_true", help="list the known datasets and checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no gdown progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.list:
        print("\n".join(list_known()))  # final listing for the user
        return 0
    if not args.task:
        parser.error("give --task (or --list)")
    try:
        for task in args.task:
            if not args.no_data:
                target = download_dataset(task, args.suite, args.data_dir, args.force, args.quiet)
                print(f"{task}: data in {target}")
            if args.checkpoints:
                found = checkpoints_for(task, args.suite)
                if not found:
                    raise DownloadError(f"no published checkpoint is known for task {task!r}")
                for ckpt in found:
                    path = download_checkpoint(ckpt, args.log_dir, args.force, args.quiet)
                    print(f"{task}: checkpoint {path}\n  fine-tune it: {ckpt.finetune_command()}")
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
