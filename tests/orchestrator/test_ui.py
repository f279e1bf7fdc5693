"""What a researcher meets in MLflow's UI after a sweep: the store through MlflowClient, and
the real ``orch ui`` server in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
selenium from PyPI; skipped, saying what is missing, without them).

One small digits sweep (two norms, one seed, two epochs) is made first; only then is the
UI started on it, so that two processes never migrate a fresh store at once. Screenshots
of each view are saved under pytest's temp dir and their paths printed (``pytest -s``).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import _free_port, invoke, orch, write_grid
from orchestrator.store.schema import TRAINING_EXPERIMENT, Artifact, Kind, Tag

SWEEP = "ui-tiny"
WAIT = 30  # seconds for one view to render on a loaded 2-core machine


@pytest.fixture(scope="module")
def ui_sweep(tmp_path_factory):
    """(store URI, folder): a finished two-point digits sweep, system metrics sampled every second."""
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    grid = write_grid(tmp / "grid.yaml", SWEEP, {"model.norm": ["bn", "gn"]}, seeds=(0,))
    proc = orch("sweep", str(grid), "--workers", "2", "-q", cwd=tmp,
                env={"MLFLOW_TRACKING_URI": uri, "ORCH_SYSTEM_METRICS_SECONDS": "1"})
    assert proc.returncode == 0, proc.stderr
    return uri, tmp


def _runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    points = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.POINT]
    return client, exp, parent, points


# ------------------------------------------------------------------ through MlflowClient


def test_experiment_opens_as_training_runs(ui_sweep):
    _, exp, _, _ = _runs(ui_sweep[0])
    assert exp.tags[Tag.EXPERIMENT_KIND] == TRAINING_EXPERIMENT


def test_parent_description_holds_grid_table_best_link_and_artifacts(ui_sweep):
    _, exp, parent, points = _runs(ui_sweep[0])
    note = parent.data.tags[Tag.NOTE]
    assert "`model.norm` ∈ {bn, gn}" in note and "Seeds: 0" in note and "**2 done**, 0 failed" in note
    assert "| val_f1_macro mean ± std" in note  # orch compare's markdown table
    for norm in ("bn", "gn"):
        assert any(line.startswith("| 1 ") or line.startswith("| 2 ") for line in note.splitlines()
                   if f" {norm} " in line)
    best = max(points, key=lambda r: r.data.metrics["val_f1_macro"])
    assert f"[{best.info.run_name}](#/experiments/{exp.experiment_id}/runs/{best.info.run_id}?" in note
    for path in (Artifact.SUMMARY, Artifact.VAL_CURVES, Artifact.GRID):
        assert f"`{path}`" in note


def test_every_point_has_note_datasets_and_system_metrics(ui_sweep):
    client, _, _, points = _runs(ui_sweep[0])
    assert len(points) == 2
    for run in points:
        note = run.data.tags[Tag.NOTE]
        assert note.startswith(f"model.norm={run.data.params['model.norm']}, seed 0: val_f1_macro **")
        inputs = run.inputs.dataset_inputs
        splits = {t.value for i in inputs for t in i.tags if t.key == Tag.DATA_CONTEXT}
        assert splits == {"train", "val", "test"}
        assert all(i.dataset.name.startswith("digits-") and len(i.dataset.digest) >= 8 for i in inputs)
        system = [k for k in run.data.metrics if k.startswith("system/")]
        assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
        assert client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")


# ------------------------------------------------------------------ orch ui


def test_ui_refuses_a_missing_store_and_creates_none(tmp_path):
    proc = invoke("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--port", str(_free_port()),
                  cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no MLflow store" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ui_refuses_a_port_in_use(ui_sweep):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = invoke("ui", "--tracking-uri", ui_sweep[0], "--port", str(s.getsockname()[1]))
    assert proc.returncode == 2 and "choose another --port" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def ui_server(ui_sweep):
    """``orch ui`` on a free loopback port: (its base URL, the URL it printed, its process)."""
    uri, tmp = ui_sweep
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=open(tmp / "ui.log", "w"), text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        printed = lines.get(timeout=180).strip()
    except queue.Empty:
        proc.kill()
        pytest.fail(f"orch ui printed no URL in 180 s:\n{(tmp / 'ui.log').read_text()[-3000:]}")
    try:
        yield f"http://127.0.0.1:{port}", printed, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_ui_prints_the_newest_sweep_quietly(ui_sweep, ui_server):
    base, printed, proc = ui_server
    _, exp, parent, _ = _runs(ui_sweep[0])
    run_page = f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    assert printed == f"{base}/{run_page}?workflowType=machine_learning"  # the training layout
    log = (ui_sweep[1] / "ui.log").read_text()
    assert "INFO" not in log and "Traceback" not in log, log  # quiet: no uvicorn/GenAI scheduler lines


def _tree(pid: int) -> list[int]:
    import psutil

    root = psutil.Process(pid)
    return [root.pid, *(p.pid for p in root.children(recursive=True))]


def test_ui_runs_one_server_process(ui_server):
    import psutil

    _, _, proc = ui_server
    names = [" ".join(psutil.Process(p).cmdline()) for p in _tree(proc.pid)]
    assert len(names) == 3, names  # orch ui -> mlflow ui -> one uvicorn process; no huey consumers
    assert not any("huey" in n for n in names), names


# ------------------------------------------------------------------ in Chromium


def _chromium():
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    missing = [what for what, found in (("chromium", chrome), ("chromedriver (chromium-driver)", driver)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        pytest.skip(f"real-browser test needs {', '.join(missing)}: apt-get install chromium chromium-driver; "
                    "pip install selenium (.ci/run installs them)")
    return chrome, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome, driver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1100", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


class Page:
    """The browser on the UI, with waits and a screenshot per view."""

    def __init__(self, driver, folder: Path):
        self.d, self.folder = driver, folder
        folder.mkdir(parents=True, exist_ok=True)

    def open(self, url: str) -> None:
        self.d.get(url)

    def find(self, xpath: str, timeout: float = WAIT):
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.webdriver.common.by import By

        return WebDriverWait(self.d, timeout).until(ec.visibility_of_element_located((By.XPATH, xpath)))

    def click(self, xpath: str) -> None:
        el = self.find(xpath)
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        el.click()

    def until(self, script: str, timeout: float = WAIT):
        """Wait until ``script`` returns a true value in the page (an image loads after its
        element appears)."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.d, timeout).until(lambda d: d.execute_script(script))

    def text(self) -> str:
        return self.d.find_element("tag name", "body").text

    def shot(self, name: str) -> Path:
        path = self.folder / f"{name}.png"
        self.d.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path


def _text_is(text: str) -> str:
    return f"normalize-space(.)='{text}'"


def test_what_a_researcher_sees(ui_sweep, ui_server, browser, tmp_path_factory):
    base, printed, _ = ui_server
    _, exp, parent, points = _runs(ui_sweep[0])
    page = Page(browser, tmp_path_factory.mktemp("screenshots"))
    shots = []

    # 1. The experiment opens on the training-runs view: the runs table, not the GenAI overview.
    page.open(f"{base}/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
    page.find("//*[normalize-space(text())='Run Name']")
    page.find(f"//a[{_text_is(SWEEP)} and contains(@href, '/runs/{parent.info.run_id}')]")
    body = page.text()
    assert "Detect Issues" not in body and "Token Usage" not in body and "Evaluations" not in body
    shots.append(page.shot("1-experiment-runs"))

    # 2. The parent row expands to its children.
    row = page.find(f"//a[contains(@href, '/runs/{parent.info.run_id}')]/ancestor::div[@role='gridcell'][1]")
    row.find_element("css selector", "button").click()
    for run in points:
        page.find(f"//a[{_text_is(run.info.run_name)}]")
    shots.append(page.shot("2-parent-expanded"))

    # 3. The URL that orch ui printed: the parent's overview, whose description holds the table.
    page.open(printed)
    page.find("//*[normalize-space(text())='Description']")
    more = browser.find_elements("xpath", "//*[normalize-space(text())='Show more']")
    if more:
        page.click("//*[normalize-space(text())='Show more']")
    table = page.find("//table[.//th[contains(., 'val_f1_macro mean ± std')]]")
    assert "bn" in table.text and "gn" in table.text and "1/1" in table.text
    best = max(points, key=lambda r: r.data.metrics["val_f1_macro"])
    link = page.find(f"//a[{_text_is(best.info.run_name)} and contains(@href, '{best.info.run_id}')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)
    shots.append(page.shot("3-parent-description"))

    # 4. The best child (the description's link): plots/curves.png among its artifacts.
    page.open(link.get_attribute("href"))  # the markdown link, resolved against the UI's address
    page.find(f"//*[@role='tab' and {_text_is('Artifacts')}]")
    assert best.info.run_id in browser.current_url
    page.click(f"//*[@role='tab' and {_text_is('Artifacts')}]")
    page.click("//*[normalize-space(text())='plots']")
    page.click("//*[normalize-space(text())='curves.png']")
    page.find("//*[contains(normalize-space(.), 'plots/curves.png')]")
    page.find("//img")
    page.until("return [...document.images].some(i => i.naturalWidth > 200)")  # the PNG loaded
    shots.append(page.shot("4-child-artifacts"))

    # 5. Its System metrics tab shows charts.
    page.click(f"//*[@role='tab' and {_text_is('System metrics')}]")
    page.find("//*[normalize-space(text())='cpu_utilization_percentage']")
    page.find("//*[contains(@class, 'js-plotly-plot')]")
    assert len(browser.find_elements("css selector", ".js-plotly-plot")) >= 1
    shots.append(page.shot("5-child-system-metrics"))

    assert all(p.stat().st_size > 10_000 for p in shots)


def test_ui_stops_with_its_server_on_sigterm(ui_server):
    """Last: SIGTERM to ``orch ui`` stops the server too (exit 143, no process left)."""
    import psutil

    _, _, proc = ui_server
    pids = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(procs, timeout=30)  # the server's workers may take a moment after it
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
