"""Every function imports the way Lambda loads it: its CodeUri folder plus the layer, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from local.template_stack import load_template

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {
    name: resource["Properties"]
    for name, resource in load_template()["Resources"].items()
    if resource["Type"] == "AWS::Serverless::Function"
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_handler_imports_with_only_its_code_and_the_layer(name: str) -> None:
    props = FUNCTIONS[name]
    module, handler = props["Handler"].rsplit(".", 1)
    code = ROOT / props["CodeUri"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{code}{os.pathsep}{ROOT / 'layers' / 'shared'}"

    result = subprocess.run(
        [sys.executable, "-c", f"import {module}; assert callable({module}.{handler})"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
