"""Masking the API key in a trial's files (genai-bench writes it into its log and metadata)."""

from llm_autotuner.secrets import scrub_folder


def test_every_file_under_the_folder_is_masked_and_links_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_API_KEY", "sk-live-123456")
    outside = tmp_path / "outside.txt"
    outside.write_text("sk-live-123456 is mine")
    nested = tmp_path / "trial" / "genai-bench" / "run"
    nested.mkdir(parents=True)
    (tmp_path / "trial" / "genai-bench.log").write_text("--api-key sk-live-123456\n")
    (nested / "experiment_metadata.json").write_text('{"api_key": "sk-live-123456"}')
    (nested / "link").symlink_to(outside)
    scrub_folder(tmp_path / "trial")
    assert (tmp_path / "trial" / "genai-bench.log").read_text() == "--api-key ***\n"
    assert (nested / "experiment_metadata.json").read_text() == '{"api_key": "***"}'
    assert outside.read_text() == "sk-live-123456 is mine"  # not under the folder: a link is not followed


def test_a_folder_that_is_not_there_is_nothing_to_mask(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_API_KEY", "sk-live-123456")
    scrub_folder(tmp_path / "gone")
