"""The lm-eval task folders SupportBench ships (pass this folder to lm-eval's --include_path)."""

from importlib import resources
from pathlib import Path


def include_path() -> Path:
    """The installed folder holding the customer_support task YAMLs."""
    return Path(str(resources.files(__name__)))
