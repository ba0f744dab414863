"""Packaging metadata: the license text, project URLs, the version on the commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_file_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+")
def test_pyproject_names_license_file_and_urls() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Source", "Issues",
                                    "Changelog"}
    assert all(url.startswith("https://") for url in project["urls"].values())
    import jobmetrics

    assert project["version"] == jobmetrics.__version__


def test_test_script_stops_no_service_it_did_not_install(tmp_path: Path) -> None:
    """scripts/test.sh on a machine that already has redis-server, promtool and the
    Pushgateway (a developer's workstation) must not stop them."""
    import os
    import subprocess

    bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    calls = tmp_path / "systemctl.calls"
    stubs = {bin_dir / "systemctl": f'#!/bin/sh\necho "$@" >> {calls}\n'}
    for tool in ("promtool", "redis-server", "prometheus-pushgateway"):
        stubs[bin_dir / tool] = "#!/bin/sh\nexit 0\n"
    for tool in ("python", "ruff", "mypy"):  # the venv's tools: nothing to run here
        stubs[venv / tool] = "#!/bin/sh\nexit 0\n"
    for path, text in stubs.items():
        path.write_text(text)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin",
           "JOBMETRICS_VENV": str(tmp_path / "venv")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "test.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not calls.exists(), calls.read_text()
