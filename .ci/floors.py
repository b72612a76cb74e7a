"""Write pip constraints that pin every direct dependency of pyproject.toml (and the given extras) to its floor.

    python .ci/floors.py OUT.txt app test

torch is left to constraints.txt (the local CPU wheel): any other torch pulls gigabytes of CUDA.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + [r for extra in sys.argv[2:] for r in project["optional-dependencies"][extra]]
floors = []
for requirement in requirements:
    pattern = r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([^,;]+)(?:,<[^,;]+)?"  # name[extras]>=floor, maybe ,<cap
    name, floor = re.fullmatch(pattern, requirement.replace(" ", "")).groups()
    if name != "torch":
        floors.append(f"{name}=={floor}")
Path(sys.argv[1]).write_text("\n".join(floors) + "\n")
print("floors:", " ".join(floors))
