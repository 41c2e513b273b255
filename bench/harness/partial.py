"""A run's results written out as they are filled in: a device call that runs past its limit
returns what is under its output folder, so the workloads timed before the limit are kept (a
lost call returns nothing either way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class WrittenAsFilled(dict):
    """The `workloads` of `results`: each workload set here writes all of `results` to `path`."""

    def __init__(self, path: Path, results: dict[str, Any]):
        super().__init__()
        self.path = path
        self.results = results
        results["workloads"] = self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.results, indent=2))
