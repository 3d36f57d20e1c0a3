"""The wheel installs beside anything: its code is one package (llm_autotuner), so packages named
`cluster` and `templates` in the same environment neither break it nor are broken by it. And the
installed dependencies are the versions the code was tested with."""

import importlib.metadata
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "llm-autotuner"


def build_wheel(source: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = out.glob("*.whl")
    return wheel


def other_project(root: Path, name: str) -> Path:
    """A distribution installing a top-level package `name`, as PyPI's `cluster` and `templates` do."""
    project = root / f"other-{name}"
    (project / name).mkdir(parents=True)
    (project / name / "__init__.py").write_text(f"WHO = 'the other {name}'\n")
    (project / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "other-{name}"\nversion = "1.0"\n[tool.setuptools]\npackages = ["{name}"]\n')
    return project


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new virtualenv holding our wheel and two packages named cluster and templates; the heavy
    dependencies (Ray...) are seen from this test's environment, after the venv's own packages."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    ours = build_wheel(REPO, wheels / "ours")
    others = [build_wheel(other_project(root, name), wheels / name) for name in ("cluster", "templates")]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Plain path lines: this environment's .pth hooks (our editable install) are not run from there.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for wheel in [*others, ours]:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                       check=True, capture_output=True, timeout=300)
    return venv, ours


def test_the_wheel_holds_one_package_with_its_templates_and_manifests(fresh_env):
    _, wheel = fresh_env
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"llm_autotuner"}, top
    assert "llm_autotuner/templates/inference_service.yaml.j2" in names
    assert "llm_autotuner/cluster/rbac.yaml" in names


def test_autotuner_validates_an_example_next_to_packages_named_cluster_and_templates(fresh_env, tmp_path):
    venv, _ = fresh_env
    # From another working directory, so nothing comes from the repository by accident.
    for example in ("quickstart-cpu.yaml", "ome-sglang.yaml"):
        completed = subprocess.run([str(venv / "bin" / "autotuner"), "validate", str(REPO / "examples" / example)],
                                   capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert ": ok (" in completed.stdout
    rendered = subprocess.run([str(venv / "bin" / "autotuner"), "render", str(REPO / "examples" / "ome-sglang.yaml"),
                               "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr  # the templates came from the wheel
    others = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import cluster, templates, llm_autotuner.cluster as ours; print(cluster.WHO, templates.WHO,"
                             " ours.__file__)"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert others.stdout.split()[:6] == ["the", "other", "cluster", "the", "other", "templates"], others.stderr
    assert str(venv) in others.stdout  # our cluster package is the wheel's, under its own name


def test_installed_dependencies_are_the_versions_the_code_is_pinned_to():
    untested = []
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": "dev"}):
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            untested.append(f"{requirement.name}: not installed (needs {requirement.specifier})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            untested.append(f"{requirement.name} {installed} is installed; this code is tested with "
                            f"{requirement.specifier} (pyproject.toml)")
    assert not untested, "untested dependency versions: " + "; ".join(untested)
