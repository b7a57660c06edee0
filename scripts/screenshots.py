"""Take the README's screenshot of the dashboard: ``docs/img/overview.png``.

Runs ``closedloop demo`` into a temporary data directory, creates an admin account, starts
``closedloop serve`` on a free port, signs in through the form with Debian's chromium (driven
by Playwright; never downloads a browser) and captures the overview at 1280×800.

Usage: ``.venv/bin/python scripts/screenshots.py [--out docs/img/overview.png]``
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
EMAIL = "admin@example.com"
PASSWORD = "screenshot-password-1"
PROJECT = "demo"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _closedloop(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "closedloop", *args],
        env=env,
        input=stdin,
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"closedloop serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("closedloop serve did not become ready")


def capture(out: Path, data_dir: Path) -> None:
    """Fill ``data_dir`` with the demo, serve it and write the overview's screenshot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(CLOSEDLOOP_DATA_DIR=str(data_dir), CLOSEDLOOP_EMBEDDER="lexical")
    _closedloop(env, "demo", "--interactions", "400")
    _closedloop(
        env, "users", "create", EMAIL, "--project", PROJECT, "--password-stdin", stdin=PASSWORD
    )
    port = _port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "closedloop", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(base, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}/ui/login")
            page.fill("input[name=email]", EMAIL)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/p/{PROJECT}/")
            page.goto(f"{base}/ui/p/{PROJECT}/?window=24h")
            page.wait_for_load_state("networkidle")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "overview.png")
    options = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit("Debian's chromium is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="closedloop-shots-") as tmp:
        capture(options.out, Path(tmp) / "data")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
