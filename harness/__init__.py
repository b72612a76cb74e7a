"""SupportBench: LoRA fine-tuning and honest base-vs-fine-tuned scoring for customer-support models."""

__version__ = "0.1.0"
