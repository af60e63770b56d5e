"""Tests that run real Ultralytics / torchrun training on CPU, without Slurm."""
