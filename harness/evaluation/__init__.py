"""Evaluation: score base and fine-tuned models through the lm-eval task, cache base scores, apply the release gate."""
