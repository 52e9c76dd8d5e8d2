"""The wheel holds every module and the license, and the tool runs from it rather than from the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_packages_every_module_and_runs_without_the_checkout(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("cifar_resnet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cifar_resnet_cli").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, check=False
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
        )

    where = run("-c", "import cifar_resnet_cli; print(cifar_resnet_cli.__file__)")
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    version = run("-m", "cifar_resnet_cli", "--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(__import__("cifar_resnet_cli").__version__), (
        version.stderr
    )
    inspect = run("-m", "cifar_resnet_cli", "inspect", "--json")
    assert inspect.returncode == 0, inspect.stderr[-2000:]
    assert json.loads(inspect.stdout)["max_abs_diff"] == 0
