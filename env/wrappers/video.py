"""MP4 recording of a sub-environment's episodes (imageio + ffmpeg).

The factory puts this wrapper directly around the raw env of the first `n_video_envs` sub-envs when
`env.save_video` is true, so one frame is written per env step (not per chunk).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)


class VideoRecorder(gym.Wrapper):
    """Write the next `n_episodes` episodes of `env` to `<video_dir>/<prefix>_env<index>_ep<k>.mp4`.

    Frames come from `env.render()` ((H, W, 3) uint8, even H and W). Recording re-arms when `reset` receives
    `options={"video_prefix": "<name>"}` (e.g. from `vector_env.reset(options=...)` before an evaluation): the
    next `n_episodes` episodes are then written under that prefix.

    Args:
        env: raw env built with rendering enabled.
        video_dir: output folder (created).
        prefix: file name prefix of the first recordings (the env name).
        index: sub-env index, part of the file name.
        n_episodes: episodes recorded per arming.
        fps: frames per second of the files; None: the env's `render_fps` metadata (30 if absent).
    """

    def __init__(
        self, env: gym.Env, video_dir: str, prefix: str, index: int = 0, n_episodes: int = 1, fps: int | None = None
    ) -> None:
        super().__init__(env)
        self.video_dir = Path(video_dir)
        self.video_dir.mkdir(parents=True, exist_ok=True)
        self.n_episodes = int(n_episodes)
        self.fps = int(fps if fps is not None else (env.metadata or {}).get("render_fps", 30))
        self._prefix = prefix
        self.index = int(index)
        self._remaining = self.n_episodes
        self._episode = 0
        self._writer: Any = None
        self.paths: list[Path] = []

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _append_frame(self) -> None:
        frame = self.env.render()
        if frame is None:
            raise RuntimeError("VideoRecorder: the env returned no frame; it must be built with rendering on")
        self._writer.append_data(np.asarray(frame, dtype=np.uint8))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._close_writer()
        if options and "video_prefix" in options:
            self._prefix = str(options["video_prefix"])
            self._remaining = self.n_episodes
            self._episode = 0
        obs, info = self.env.reset(seed=seed, options=options)
        if self._remaining > 0:
            import imageio.v2 as imageio

            path = self.video_dir / f"{self._prefix}_env{self.index:02d}_ep{self._episode:03d}.mp4"
            self._writer = imageio.get_writer(path, fps=self.fps, codec="libx264", macro_block_size=1)
            self.paths.append(path)
            self._remaining -= 1
            self._episode += 1
            log.info("recording %s", path)
            self._append_frame()
        return obs, info

    def step(self, action: Any):
        result = self.env.step(action)
        if self._writer is not None:
            self._append_frame()
        return result

    def close(self) -> None:
        self._close_writer()
        super().close()
