"""lm-eval task definitions for SupportBench (use with `lm_eval --include_path tasks`)."""
