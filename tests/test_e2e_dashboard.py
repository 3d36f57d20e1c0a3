"""The Ray dashboard a local run starts: its address printed at the start, and each trial's actor
found in it by the trial's task, number and config, as a user looks for it: in the dashboard's
Actors page in a browser (headless Chromium) and through its HTTP API, signed in with the
cluster's token. AUTOTUNER_SCREENSHOTS=DIR keeps the page's screenshot (docs/images)."""

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.browser import Browser
from tests.conftest import Driver, instant_engine

pytestmark = pytest.mark.e2e

TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # where Ray keeps the token of a local cluster


def get_json(url: str, token: str | None) -> tuple[int, dict | None]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None
    except (urllib.error.URLError, OSError):
        return 0, None  # not answering (the run ended and its Ray with it)


def test_the_dashboard_shows_each_trial_by_name_while_the_run_goes(tmp_path):
    served = f"dash-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "dash",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "binary": str(instant_engine(tmp_path / "engine", delay_s=0.3)),
                   "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [2, 4]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2], "max_requests_per_stage": 4},
        "search": {"algorithm": "random", "seed": 1, "num_samples": 2, "confirm_top_k": 0},
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    names: set[str] = set()
    with Driver(path, dashboard=True) as driver:
        driver.read_until("Ray dashboard: ", timeout_s=300)
        url = re.search(r"Ray dashboard: (http://\S+)", driver.lines[-1]).group(1)
        assert url.startswith("http://127.0.0.1:")  # loopback only: reached through an SSH tunnel
        token = TOKEN_FILE.read_text().strip() if "ray get-auth-token" in driver.lines[-1] else None
        if token:
            assert get_json(f"{url}/api/v0/actors", None)[0] == 401  # the API is not open to anyone

        def watch_actors():  # from now until the run ends: dead actors stay listed, live ones are added
            while driver.process.poll() is None:
                status, body = get_json(f"{url}/api/v0/actors?detail=true&limit=1000", token)
                if status == 200:
                    names.update(actor["repr_name"] for actor in body["data"]["result"]["result"]
                                 if actor.get("repr_name"))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch_actors, daemon=True)
        watcher.start()
        with Browser() as browser:
            browser.open(f"{url}/#/actors", headers={"Authorization": f"Bearer {token}"} if token else None)
            # The page lists the actors it fetched; trial 2 starts once the baseline has ended.
            shown = browser.wait_for("document.body.innerText.includes('dash tune #2: parallel=')", timeout_s=300,
                                     reload_every_s=5)
            page = browser.text()
            screenshot = browser.screenshot(tmp_path / "dashboard-actors.png")
        output = driver.finish(timeout_s=600)
        watcher.join(timeout=30)
    assert driver.process.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "results" / "dash" / "results.json").read_text())
    expected = {f"dash tune #{t['experiment_id']}: " + ("engine defaults" if t["baseline"]
                                                         else f"parallel={t['parameters']['parallel']}")
                for t in results["all_results"]}
    assert len(expected) == 3 and names == expected
    assert shown and all(name in page for name in sorted(expected)[:2]), page[-2000:]
    assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("AUTOTUNER_SCREENSHOTS"):
        Path(os.environ["AUTOTUNER_SCREENSHOTS"], "dashboard-actors.png").write_bytes(screenshot.read_bytes())
    if token:
        assert token not in output  # a credential for the cluster: never printed
