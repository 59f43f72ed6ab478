"""Screenshots of optuna-dashboard on a finished study, as a person sees them: the study's note and one trial's page
(its note with the architecture table, and its artifact). Headless Chromium from Debian's `chromium` package
(installed here with apt-get when it is missing); the pictures go to bench/results/dashboard-*.png.

    python bench/dashboard_screenshot.py                                  # studies/quickstart.yaml, after make demo
    python bench/dashboard_screenshot.py --study studies/pvt_quickstart.yaml --trial 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from record import RESULTS  # noqa: E402


def chromium() -> str:
    """Debian's headless-capable Chromium, installed when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    print("installing Debian's chromium (apt-get) for the screenshots")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "fonts-dejavu-core"],
                   check=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return shutil.which("chromium")


def wait_for(url: str, server: subprocess.Popen, seconds: float = 60) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the dashboard did not answer at {url}")
            time.sleep(0.5)


def screenshot(browser: str, url: str, out: Path, size: str) -> Path:
    with tempfile.TemporaryDirectory() as profile:
        # the flags Chromium needs on a machine with no display and no network but the loopback
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={size}",
                        "--virtual-time-budget=15000", f"--screenshot={out}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "quickstart.yaml",
                        help="a study file whose search has run (default: the quick-start's)")
    parser.add_argument("--trial", type=int, default=1, help="the trial whose page to show (default 1: the paper's "
                                                             "allocation, the second reference)")
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args()
    browser = chromium()
    nas = [sys.executable, "-m", "nas.cli"]
    subprocess.run(nas + ["report", str(args.study)], check=True, cwd=ROOT)  # the charts as study artifacts
    server = subprocess.Popen(nas + ["dashboard", str(args.study), "--port", str(args.port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{args.port}"
    try:
        studies = json.loads(wait_for(f"{base}/api/studies", server))["study_summaries"]
        from nas.study import Study

        name = Study.load(args.study).name
        study_id = next((s["study_id"] for s in studies if s["study_name"] == name), None)
        if study_id is None:
            raise SystemExit(f"no study {name!r} in its storage: run `nas run {args.study}` first")
        RESULTS.mkdir(exist_ok=True)
        shots = [screenshot(browser, f"{base}/dashboard/studies/{study_id}/note",
                            RESULTS / "dashboard-study-note.png", "1500,1000"),
                 screenshot(browser, f"{base}/dashboard/studies/{study_id}/trials?numbers={args.trial}",
                            RESULTS / "dashboard-trial.png", "1900,1500")]
    finally:
        server.terminate()
        server.wait(timeout=30)
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
    for shot in shots:
        print(f"wrote {shot.relative_to(ROOT)} ({version})")


if __name__ == "__main__":
    main()
