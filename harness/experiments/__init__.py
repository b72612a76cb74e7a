"""Experiments across runs: ranking base models and sweeping LoRA settings."""
