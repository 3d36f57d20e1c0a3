"""Layers import downward only: the shared vocabulary (llm_autotuner's own modules) imports none of
ours above it, cluster/ imports only the vocabulary, trainables/ adds cluster/, tuner/ may import
all. A change then has one place, and a lower layer can be read (and tested) alone."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Folder in the repository -> (its package, its rank: an import may only go to a rank below or equal).
LAYERS = {"llm_autotuner": ("llm_autotuner", 0), "cluster": ("llm_autotuner.cluster", 1),
          "trainables": ("llm_autotuner.trainables", 2), "tuner": ("llm_autotuner.tuner", 3)}


def rank_of(module: str) -> int | None:
    """The rank of one of our modules by its dotted name; None for anything not ours."""
    if not module.startswith("llm_autotuner"):
        return None
    ranks = [rank for package, rank in LAYERS.values() if module == package or module.startswith(package + ".")]
    return max(ranks)  # the longest match: llm_autotuner.cluster.x is cluster's, not the vocabulary's


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from llm_autotuner import tuner` imports the tuner package itself.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for folder, (package, rank) in LAYERS.items():
        files = (REPO / folder).glob("*.py")
        for path in files:
            for line, module in imports(path):
                target = rank_of(module)
                if target is not None and target > rank:
                    upward.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    # The test above would pass vacuously if it read nothing: it must catch a planted violation.
    planted = tmp_path / "bad.py"
    planted.write_text("from llm_autotuner.tuner.driver import run\nimport llm_autotuner.trainables.trial\n")
    assert [rank_of(module) for _, module in imports(planted)] == [3, 2]
    assert rank_of("llm_autotuner.errors") == 0 and rank_of("ray.tune") is None


# A backend is one module of cluster/ behind cluster/backend.py; an engine is one profile. The
# driver and the trial reach them only through those interfaces, so adding either touches no
# branch there. (trainables/benchmark_job.py is the OME-only load generator: it may name OME.)
BACKEND_MODULES = {"llm_autotuner.cluster.local", "llm_autotuner.cluster.ome"}
BACKEND_SETTINGS = {"LocalDeployment", "OmeDeployment"}
ENGINE_NAMES = {"llama.cpp", "sglang", "vllm"}


def backend_or_engine_branches(path: Path) -> list[str]:
    found = [f"line {line}: imports {module}" for line, module in imports(path)
             if module.rpartition(".")[0] in BACKEND_MODULES or module in BACKEND_MODULES]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
                    {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            if named & BACKEND_SETTINGS:
                found.append(f"line {node.lineno}: isinstance on a backend's settings")
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ENGINE_NAMES
                                                 for c in node.comparators):
            found.append(f"line {node.lineno}: compares with an engine's name")
    return found


def test_driver_and_trial_name_no_backend_and_no_engine():
    branches = [f"{path.relative_to(REPO)} {what}"
                for folder in ("tuner", "trainables") for path in sorted((REPO / folder).glob("*.py"))
                if path.name != "benchmark_job.py" for what in backend_or_engine_branches(path)]
    assert not branches, "backend or engine branches outside their modules:\n" + "\n".join(branches)


def test_the_branch_check_sees_a_planted_branch(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text("from llm_autotuner.cluster.ome import OmeDeployer\n"
                       "if isinstance(task.deployment, OmeDeployment): pass\n"
                       "if task.engine.name == 'llama.cpp': pass\n")
    assert len(backend_or_engine_branches(planted)) == 3
