"""The Docker images install with the very scripts the README's commands run, so they cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]


def _run_lines(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


def _make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = [line.strip() for line in lines[start + 1 :] if line.startswith("\t")]
    deps = lines[start].split(":", 1)[1].split()
    for dep in deps:
        recipe = _make_recipe(dep) + recipe
    return recipe


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_with_the_setup_scripts_only(dockerfile):
    runs = _run_lines(dockerfile)
    assert any("bash scripts/setup.sh" in r for r in runs), f"{dockerfile.name} does not run scripts/setup.sh"
    assert any("bash scripts/setup-browser.sh" in r for r in runs)
    for r in runs:  # the Python side comes only from the scripts: no pip of its own
        assert not re.search(r"\bpip3?\b|python\S* -m pip|requirements", r), f"{dockerfile.name}: {r}"
    assert re.search(r'^CMD \["make", "demo"\]', dockerfile.read_text(), re.M)


def test_readme_commands_run_the_same_scripts():
    demo, test = _make_recipe("demo"), _make_recipe("test")
    assert "bash scripts/setup.sh" in demo and "bash scripts/setup.sh" in test
    assert "bash scripts/setup-browser.sh" in test
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for df in DOCKERFILES:
        assert f"docker build -f docker/{df.name}" in readme, f"README lacks the build command of {df.name}"
    assert (REPO / ".ci" / "run").read_text().count("make test") == 1


def test_cuda_image_builds_mmcv_ops_for_cuda_and_cpu_image_does_not():
    cuda, cpu = (p.read_text() for p in DOCKERFILES)
    assert "CXRFUSE_MMCV_CUDA=1" in cuda and "CXRFUSE_MMCV_CUDA=0" in cpu
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "CXRFUSE_MMCV_CUDA" in setup and 'FORCE_CUDA="$FORCE_CUDA"' in setup
