"""Suites: importing this package registers every suite (heavy imports stay inside each module's functions)."""

from env.suites import avoid, gym_locomotion, kitchen, robomimic

__all__ = ["avoid", "gym_locomotion", "kitchen", "robomimic"]
