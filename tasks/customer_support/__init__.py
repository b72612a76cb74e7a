"""The customer-support lm-eval tasks: YAMLs plus utils.py."""
