"""Screenshot of the clinician page for the README: docs/service-result.png.

    python scripts/service_screenshot.py --model EXPORT --explain CHECKPOINT [--out docs/service-result.png]

Starts `skinedge serve` on 127.0.0.1 with a fresh data folder, signs in through the page in
Debian's chromium (Playwright), uploads a drawn lesion (a synthetic image: no ISIC image goes
into the repository, their licence is non-commercial), waits for the probabilities and the
Grad-CAM overlay, and captures the result card at 1280 px.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]


def drawn_lesion(path: Path, seed: int = 3) -> Path:
    """A pigmented, irregular blob on skin, 600x450 like a HAM10000 image."""
    rng = np.random.default_rng(seed)
    h, w = 450, 600
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    radius = 120 + 18 * np.sin(3 * angle + 0.5) + 10 * np.sin(7 * angle)
    distance = np.hypot((yy - h / 2) / 0.9, xx - w / 2)
    inside = np.clip((radius - distance) / 25, 0, 1)[..., None]
    skin = np.array([222, 178, 160], np.float32)
    lesion = np.array([112, 66, 48], np.float32) - 30 * np.clip(1 - distance / radius, 0, 1)[..., None]
    pixels = skin * (1 - inside) + lesion * inside + rng.normal(0, 6, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    image.filter(ImageFilter.GaussianBlur(1.5)).save(path, quality=92)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--explain", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "service-result.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="skinedge-screenshot-"))
    data = work / "service"
    skinedge = [sys.executable, "-m", "skinedge.cli.main"]
    token = subprocess.run([*skinedge, "users", "add", "dr-okafor", "--data-dir", str(data)],
                           check=True, capture_output=True, text=True).stdout.split()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*skinedge, "serve", "--model", str(args.model), "--explain",
                               str(args.explain), "--data-dir", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for _ in range(240):  # the model loads in the server's lifespan
                try:
                    page.goto(f"{url}/")
                    break
                except Exception:
                    time.sleep(0.5)
            page.fill("#token-input", token)
            page.press("#token-input", "Enter")
            page.set_input_files("#file-input", str(drawn_lesion(work / "lesion.jpg")))
            page.fill("#patient-ref", "P-0042")
            page.fill("#body-site", "Left forearm")
            page.click("#upload-button")
            page.wait_for_function("""() => ['case-image', 'case-overlay'].every(id => {
                const img = document.getElementById(id);
                return img && !img.hidden && img.complete && img.naturalWidth > 0; })""",
                                   timeout=60_000)
            page.locator("#case-card").screenshot(path=str(args.out))
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
