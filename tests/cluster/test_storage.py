"""Trial files through the run's storage (cluster/storage.py), on a pyarrow filesystem that is
not a local path (SubTreeFileSystem, as an object store is reached): uploads with the API key
masked, leftovers of dead writers collected, attempts filed under the trial's name."""

import json
import subprocess
import sys

import pytest
from pyarrow.fs import LocalFileSystem, SubTreeFileSystem

from llm_autotuner.cluster import storage as storage_module
from llm_autotuner.cluster.storage import Storage, TrialFolder, assemble, collect_here, shown, storage_for
from llm_autotuner.errors import TaskError
from llm_autotuner.task import Task, parse_task


def task(tmp_path, **storage) -> Task:
    return Task.model_validate({"name": "t", "model": {"path": "m.gguf"}, "engine": {"name": "llama.cpp"},
                                "search_space": {"threads": [1, 2]}, "results_dir": str(tmp_path / "results")}
                               | ({"storage": storage} if storage else {}))


@pytest.fixture
def shared(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_TEST_STORAGE", str(tmp_path / "shared"))
    monkeypatch.setattr(storage_module, "LOCAL_ROOT", tmp_path / "node-disk")
    (tmp_path / "shared").mkdir()
    return storage_for(task(tmp_path, filesystem="tests.data.storage_fs:make"))


def test_the_default_storage_is_the_results_folder_written_in_place(tmp_path):
    storage = storage_for(task(tmp_path))
    assert storage.direct and storage.root == str(tmp_path / "results" / "t")
    folder = TrialFolder(storage, "abc")
    assert folder.key is None and folder.path == tmp_path / "results" / "t" / "trials" / "abc"
    # A second attempt of the trial (--resume): the first one's files are kept aside, never mixed.
    (folder.path / "engine.log").write_text("first")
    again = TrialFolder(storage, "abc")
    assert not any(again.path.iterdir())
    assert (tmp_path / "results" / "t" / "trials" / "abc.attempt-1" / "engine.log").read_text() == "first"


def test_a_filesystem_that_fails_is_one_line_naming_the_field(tmp_path):
    with pytest.raises(TaskError, match=r"^storage.filesystem: tests.data.storage_fs:make failed: KeyError"):
        storage_for(task(tmp_path, filesystem="tests.data.storage_fs:make"))  # no AUTOTUNER_TEST_STORAGE
    with pytest.raises(TaskError, match="returned dict, not a pyarrow filesystem"):
        storage_for(task(tmp_path, filesystem="builtins:dict"))
    with pytest.raises(TaskError, match=r"storage: path: a URI names its own filesystem"):
        parse_task(task(tmp_path).model_dump() | {"storage": {"path": "s3://b/p", "filesystem": "m:f"}})


def test_credentials_in_a_storage_uri_are_never_shown():
    assert shown("s3://AKIAKEY:s3cr3t@my-bucket/runs?region=eu") == "s3://my-bucket/runs"


def test_a_trial_uploads_its_files_with_the_key_masked_and_keeps_none_on_its_node(tmp_path, shared, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_API_KEY", "sk-secret-123")
    folder = TrialFolder(shared, "abc", node_id="0123456789abcdef")
    assert not shared.direct and str(folder.path).startswith(str(tmp_path / "node-disk"))
    (folder.path / "timeline.json").write_text('{"trial_start": 1}')
    folder.sync(["timeline.json"])
    uploaded = tmp_path / "shared" / "t" / "trials" / ".incoming" / "abc" / folder.key
    assert json.loads((uploaded / "timeline.json").read_text()) == {"trial_start": 1}
    (folder.path / "genai-bench").mkdir()
    (folder.path / "genai-bench" / "genai-bench.log").write_text("api_key=sk-secret-123 ok")
    folder.close()
    assert (uploaded / "genai-bench" / "genai-bench.log").read_text() == "api_key=*** ok"
    assert (uploaded / ".complete").read_text() == folder.key  # written last: the upload is whole
    assert not (uploaded / "owner.json").exists() and not folder.path.exists()
    # Nothing stays on its node, not even the trial's folder or, with no other trial, the storage's.
    assert not folder.path.parent.exists() and list((tmp_path / "node-disk").iterdir()) == []
    assembled = tmp_path / "shared" / "t" / "trials" / "abc"
    assemble(shared, {"abc": folder.key})
    assert (assembled / "timeline.json").is_file() and not (tmp_path / "shared" / "t" / "trials" / ".incoming").exists()


def test_files_a_dead_trial_left_on_its_node_are_collected_and_a_live_ones_are_not(tmp_path, shared):
    dead = TrialFolder(shared, "dead", run_id="this-run")
    (dead.path / "engine.log").write_text("cut off")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = json.loads((dead.path / "owner.json").read_text()) | {"pid": int(child.stdout)}  # exited
    (dead.path / "owner.json").write_text(json.dumps(owner))
    alive = TrialFolder(shared, "alive", run_id="this-run")  # this process: still writing
    (alive.path / "engine.log").write_text("running")
    lines = collect_here(shared, "this-run", "t.20261202-120000")
    assert len(lines) == 1 and "trial dead" in lines[0]
    incoming = tmp_path / "shared" / "t" / "trials" / ".incoming"
    assert (incoming / "dead" / dead.key / "engine.log").read_text() == "cut off"
    assert not dead.path.exists() and alive.path.exists() and not (incoming / "alive").exists()
    assert not dead.path.parent.exists() and alive.path.parent.exists()  # the storage's folder kept for it


def uploaded(trials, trial_id: str, key: str, text: str, complete: bool = True) -> None:
    folder = trials / ".incoming" / trial_id / key
    folder.mkdir(parents=True)
    (folder / "engine.log").write_text(text)
    if complete:
        (folder / ".complete").write_text(key)


def test_attempts_are_filed_by_the_key_the_reports_name_then_oldest_first(tmp_path, shared):
    trials = tmp_path / "shared" / "t" / "trials"
    (trials / "abc").mkdir(parents=True)
    (trials / "abc" / "engine.log").write_text("earlier session")  # a resumed run's first session
    for key, text in (("100-n1", "killed"), ("300-n2", "later retry"), ("200-n1", "reported")):
        uploaded(trials, "abc", key, text)
    assemble(shared, {"abc": "200-n1"})  # not the newest: the key in the trial's last reports wins
    read = lambda name: (trials / name / "engine.log").read_text()
    assert read("abc") == "reported"
    assert [read(f"abc.attempt-{n}") for n in (1, 2, 3)] == ["earlier session", "killed", "later retry"]
    assert not (trials / ".incoming").exists()
    # Without a report (the driver died first): the newest attempt is the trial's.
    uploaded(trials, "xyz", "5-n1", "older")
    uploaded(trials, "xyz", "7-n2", "newest")
    assemble(shared, {})
    assert read("xyz") == "newest" and read("xyz.attempt-1") == "older"


def test_a_late_upload_neither_displaces_a_newer_attempt_nor_is_filed_half_done(tmp_path, shared):
    trials = tmp_path / "shared" / "t" / "trials"
    uploaded(trials, "abc", "200-n1", "the attempt that counts")
    assemble(shared, {"abc": "200-n1"})
    uploaded(trials, "abc", "100-n2", "an older attempt, collected late")  # the end-of-run sweep: no reports
    uploaded(trials, "abc", "300-n1", "still uploading", complete=False)
    assemble(shared, {})
    assert (trials / "abc" / "engine.log").read_text() == "the attempt that counts"
    assert (trials / "abc.attempt-1" / "engine.log").read_text() == "an older attempt, collected late"
    assert (trials / ".incoming" / "abc" / "300-n1" / "engine.log").is_file()  # left until it is complete


def test_the_stop_is_seen_through_the_storage_and_cleared_by_the_next_run(shared):
    assert not shared.stop_requested()
    shared.request_stop()
    assert shared.stop_requested()
    shared.clear_stop()
    assert not shared.stop_requested()


def test_storage_is_picklable_for_the_workers(shared):
    import pickle

    again = pickle.loads(pickle.dumps(shared))
    assert again == shared and isinstance(again.filesystem, SubTreeFileSystem)
    assert Storage(LocalFileSystem(), "/x", "/x").direct


def test_files_an_earlier_run_left_go_to_that_runs_folder_not_this_ones(tmp_path, shared):
    earlier = TrialFolder(shared, "old", run_id="earlier-run")
    (earlier.path / "engine.log").write_text("from the run before")
    owner = json.loads((earlier.path / "owner.json").read_text()) | {"pid": 2 ** 22 + 1}  # above pid_max: dead
    (earlier.path / "owner.json").write_text(json.dumps(owner))
    collect_here(shared, "this-run", "t.20261202-120000")  # this run moved the earlier one's folder there
    assert (tmp_path / "shared" / "t.20261202-120000" / "trials" / ".incoming" / "old" / earlier.key /
            "engine.log").read_text() == "from the run before"
    assert not (tmp_path / "shared" / "t" / "trials").exists()
