"""The bad-input corpus (tests/data/bad-tasks): each malformed task file makes `autotuner run` and
`autotuner validate` exit 2 with one line naming the field and the problem (the file's
`# expect:` line), no traceback, and nothing started: no Ray, no engine, no results folder."""

from pathlib import Path

import pytest
import ray

from tests.conftest import engine_processes
from llm_autotuner.tuner import cli

CORPUS = sorted((Path(__file__).parents[1] / "data" / "bad-tasks").glob("*.yaml"))


def expected_message(path: Path) -> str:
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ")
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
@pytest.mark.parametrize("command", ["run", "validate", "render"])
def test_bad_task_exits_2_with_one_line_and_starts_nothing(path, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # results/ would be created here
    code = cli.main([command, str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.count("\n") == 1 and err.startswith("autotuner: error: "), err
    assert expected_message(path) in err
    assert "Traceback" not in out + err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()
    assert engine_processes("smol") == set()
