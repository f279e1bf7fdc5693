"""Regenerate the pictures of the docs from a fresh run of the demo.

    python docs/screenshots.py                 # about 3 minutes on 2 CPU cores
    python docs/screenshots.py --workdir /tmp/demo --reuse   # keep and reuse a finished demo store

Runs ``orch sweep experiments/grids/demo.yaml --workers 2`` in a scratch folder, then
``orch report --out``, copies the sweep's summary plots off its parent run, starts
``orch ui`` and drives headless Chromium through the views the docs show (as
``tests/orchestrator/test_ui.py`` does). Every PNG is written to ``docs/images/``,
downscaled and reduced to a 256-colour palette so that the whole set stays a few hundred KB.

Needs Debian's ``chromium`` and ``chromium-driver``, selenium and Pillow (the test extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
GRID = ROOT / "experiments" / "grids" / "demo.yaml"
WAIT = 60  # seconds for one view to render on a loaded 2-core machine
MAX_WIDTH = 1200  # pixels: wide enough to read a screenshot in the docs' content column
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""}


def orch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"orch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def run_demo(work: Path, reuse: bool) -> None:
    if reuse and (work / "mlflow.db").exists():
        return
    start = time.monotonic()
    orch("sweep", str(GRID), "--workers", "2", "--quiet", cwd=work)
    print(f"demo sweep: {time.monotonic() - start:.0f} s")


def sweep_parent(work: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id], "tags.`orch.kind` = 'sweep'", order_by=["start_time DESC"])
    points = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'")
    return client, exp, runs[0], points


def plots(work: Path) -> dict[str, Path]:
    """The report's figures and the sweep's summary plots, as files under ``work``."""
    orch("report", "--out", str(work / "report"), cwd=work)
    client, _, parent, _ = sweep_parent(work)
    local = Path(client.download_artifacts(parent.info.run_id, "plots", str(work)))
    return {
        "report-test-acc": work / "report" / "test_acc.png",
        "report-training-curves": work / "report" / "training_curves.png",
        "sweep-by-norm": local / "val_f1_macro_by_model.norm.png",
        "sweep-val-curves": local / "val_curves.png",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(port)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    printed = proc.stdout.readline().strip()  # the newest sweep's page, once the server answers
    if not printed:
        sys.exit("orch ui stopped before it printed its address")
    return proc, f"http://127.0.0.1:{port}"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,950", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(WAIT)
    return d


def wait_for(d, xpath: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, WAIT).until(ec.visibility_of_element_located((By.XPATH, xpath)))


def click(d, xpath: str) -> None:
    el = wait_for(d, xpath)
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def close_assistant(d) -> None:
    """Close MLflow 3's chat side panel, which would take a third of every screenshot."""
    for button in d.find_elements(
            "xpath", "//*[normalize-space(text())='MLflow Assistant']/following::button[@aria-label='Close'][1]"):
        button.click()


def screenshots(work: Path, shots: Path) -> dict[str, Path]:
    """The MLflow UI's views of the demo, as the docs show them."""
    _, exp, parent, points = sweep_parent(work)
    proc, base = start_ui(work)
    d = browser()
    out: dict[str, Path] = {}

    def shot(name: str) -> None:
        time.sleep(1.5)  # let charts and images finish drawing
        close_assistant(d)
        time.sleep(0.5)
        out[name] = shots / f"{name}.png"
        d.save_screenshot(str(out[name]))

    view = "workflowType=machine_learning"
    try:
        # The runs table, the sweep's parent expanded to its 18 points.
        d.get(f"{base}/#/experiments/{exp.experiment_id}?{view}")
        row = wait_for(d, f"//a[contains(@href, '/runs/{parent.info.run_id}')]/ancestor::div[@role='gridcell'][1]")
        row.find_element("css selector", "button").click()
        wait_for(d, f"//a[normalize-space(.)='{points[0].info.run_name}']")
        shot("ui-runs")

        # The parent's overview: the grid and orch compare's table in its description.
        d.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?{view}")
        wait_for(d, "//*[normalize-space(text())='Description']")
        for more in d.find_elements("xpath", "//*[normalize-space(text())='Show more']"):
            more.click()
        table = wait_for(d, "//table[.//th[contains(., 'mean ± std')]]")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)
        shot("ui-parent")

        # The best point's curves among its artifacts.
        best = max(points, key=lambda r: r.data.metrics.get("val_f1_macro", 0.0))
        d.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}/artifacts?{view}")
        click(d, "//*[normalize-space(text())='plots']")
        click(d, "//*[normalize-space(text())='curves.png']")
        wait_for(d, "//img")
        shot("ui-child-artifacts")

        # Its per-epoch metrics as MLflow charts them.
        d.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}/model-metrics?{view}")
        search = wait_for(d, "//input[@placeholder='Search metric charts']")
        search.send_keys("val_")
        wait_for(d, "//*[contains(@class, 'js-plotly-plot')]")
        shot("ui-child-metrics")
    finally:
        d.quit()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return out


def optimise(src: Path, dest: Path) -> None:
    """Downscale to MAX_WIDTH and store as a 256-colour palette PNG (text and flat plots survive it)."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        if img.width > MAX_WIDTH:
            img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            dest, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="reuse the demo store in --workdir if there is one")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="orch-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    run_demo(work, args.reuse)
    pictures = {**plots(work), **screenshots(work, work)}
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, src in pictures.items():
        optimise(src, IMAGES / f"{name}.png")
    sizes = {p.name: p.stat().st_size for p in sorted(IMAGES.glob("*.png"))}
    for name, size in sizes.items():
        print(f"{size / 1024:7.0f} KB  docs/images/{name}")
    print(f"{sum(sizes.values()) / 1024:7.0f} KB  in all")


if __name__ == "__main__":
    main()
