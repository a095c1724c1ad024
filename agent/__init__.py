"""Agents: pretraining, fine-tuning loops and algorithms, evaluation, and the plumbing they share."""
