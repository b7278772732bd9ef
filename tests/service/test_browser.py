"""The clinician web page in a real Chromium against the live server.

One flow, at a desktop and a phone size: sign in with a token, upload a real HAM10000 image,
read the result (probability bars, the decision-support notice, the Grad-CAM overlay), move
the heatmap slider, correct the class with a note, find the case in the history as corrected,
erase it and see it gone. Each step writes a screenshot to ``tmp_path`` (and to
``test-artifacts/screenshots/`` when ``SKINEDGE_SCREENSHOTS`` is set, for the docs). The page
must log no console error and no CSP violation, and must not scroll sideways at 360 px.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZES = {"desktop": (1280, 800), "phone": (360, 740)}
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

# Collects CSP violations from the first script that runs (init scripts are not under the CSP).
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; skips (before the server starts) without one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (uses /usr/bin/chromium)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install the distribution's chromium package")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def call_api(url: str, token: str, path: str) -> tuple[int, dict | None]:
    """GET ``/api/v1<path>`` with the bearer token -> (status, JSON body or None)."""
    request = urllib.request.Request(f"{url}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def sample_image(shared_data: Path) -> Path:
    images = sorted((shared_data / "ham10000-sample" / "images").glob("*.jpg"))
    if not images:
        pytest.skip(f"no JPEG in {shared_data / 'ham10000-sample' / 'images'}")
    return images[0]


def make_shooter(page, tmp_path: Path, size: str, phone: bool) -> Callable[[str], Path]:
    """shoot(step): a (full-page) screenshot per step; at phone size also no sideways scroll."""
    counter = {"n": 0}
    copy_to = SCREENSHOT_DIR if os.environ.get("SKINEDGE_SCREENSHOTS") else None

    def shoot(step: str, full_page: bool = True) -> Path:
        counter["n"] += 1
        path = tmp_path / f"{size}-{counter['n']:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if copy_to is not None:
            copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy_to / path.name)
        if phone:
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= 360, f"step {step}: page is {scroll_width} px wide at 360 px"
        return path

    return shoot


@pytest.mark.parametrize("size", list(SIZES))
def test_clinician_flow(browser, live_server, shared_data, tmp_path, size):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    url, token = live_server.url, live_server.token
    image = sample_image(shared_data)
    _, me = call_api(url, token, "/me")
    _, model = call_api(url, token, "/model")
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    shoot = make_shooter(page, tmp_path, size, phone=width <= 360)
    try:
        # Sign in (Enter in the token field submits the form: works by keyboard).
        page.goto(f"{url}/")
        expect(page.locator("#signin-view")).to_be_visible()
        expect(page.locator("#workspace")).to_be_hidden()
        shoot("sign-in")
        page.fill("#token-input", token)
        page.press("#token-input", "Enter")
        expect(page.locator("#user-name")).to_have_text(me["name"])
        expect(page.locator("#user-role")).to_have_text(me["role"])
        expect(page.locator("#correct-label option")).to_have_count(len(model["classes"]) + 1)
        assert page.evaluate("sessionStorage.getItem('skinedge.token')") == token
        shoot("signed-in")

        # Choose a real image, with a patient reference and a body site, and analyse it.
        page.set_input_files("#file-input", str(image))
        expect(page.locator("#selected-name")).to_have_text(image.name)
        page.fill("#patient-ref", "P-0042")
        page.fill("#body-site", "Forearm")
        shoot("image-chosen")
        page.click("#upload-button")
        expect(page.locator("#case-card")).to_be_visible()
        case_id = page.locator("#case-id").inner_text()
        status, case = call_api(url, token, f"/cases/{case_id}")
        assert status == 200, case

        # The result: every class as a bar, highest first, as the server ranked them.
        rows = page.locator("[data-testid=prob-row]")
        expect(rows).to_have_count(len(model["classes"]))
        shown = rows.evaluate_all(
            "rows => rows.map(r => [r.dataset.code, Number(r.dataset.probability)])")
        assert [code for code, _ in shown] == [p["code"] for p in case["probabilities"]]
        probabilities = [p for _, p in shown]
        assert probabilities == sorted(probabilities, reverse=True)
        top = case["probabilities"][0]
        assert case["lesion_image"] is True  # the served model's card has no lesion check
        expect(page.locator("#not-lesion-alert")).to_be_hidden()
        expect(page.locator("#prediction")).to_have_text(top["name"])
        expect(rows.first).to_contain_text(f"{top['probability'] * 100:.1f}%")
        fill = page.evaluate("""() => {
            const bar = document.querySelector('[data-testid=prob-row] .bar');
            return bar.firstElementChild.getBoundingClientRect().width / bar.getBoundingClientRect().width;
        }""")
        assert fill == pytest.approx(top["probability"], abs=0.02), "bar width is not the probability"
        expect(page.locator("#notice")).to_be_visible()
        expect(page.locator("#notice")).to_contain_text("Decision support, not a diagnosis")
        alert = page.locator("#malignant-alert")
        if case["malignant"]:
            expect(alert).to_be_visible()
            expect(alert).to_have_attribute("role", "alert")
        else:
            expect(alert).to_be_hidden()
        expect(page.locator("#case-details")).to_contain_text("P-0042")

        # The stored image and the Grad-CAM overlay load (through blob: URLs).
        page.wait_for_function("""() => ['case-image', 'case-overlay'].every(id => {
            const img = document.getElementById(id);
            return img && !img.hidden && img.complete && img.naturalWidth > 0;
        })""")
        assert page.evaluate("document.getElementById('case-overlay').src").startswith("blob:")
        expect(page.locator("#overlay-message")).to_be_hidden()
        page.locator("#case-card").scroll_into_view_if_needed()
        shoot("result")

        # The heatmap slider, by keyboard: Home -> 0, then five steps of 5 -> 25 %.
        slider = page.get_by_label("Heatmap opacity")
        slider.focus()
        page.keyboard.press("Home")
        opacity = "getComputedStyle(document.getElementById('case-overlay')).opacity"
        assert page.evaluate(opacity) == "0"
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        assert page.evaluate(opacity) == "0.25"
        expect(page.locator("#overlay-opacity-value")).to_have_text("25%")
        shoot("heatmap-opacity")

        # Correct the prediction to another class, with a note.
        other = next(c for c in model["classes"] if c["code"] != case["prediction"])
        page.select_option("#correct-label", other["code"])
        page.fill("#correct-note", "Dermoscopy: regular pigment network")
        page.click("#correct-button")
        expect(page.locator("#case-status")).to_have_text("Corrected")
        expect(page.locator("#review-summary")).to_contain_text(other["name"])
        expect(page.locator("#review-summary")).to_contain_text("regular pigment network")
        _, reviewed = call_api(url, token, f"/cases/{case_id}")
        assert reviewed["status"] == "corrected"
        assert reviewed["review"]["label"] == other["code"]
        shoot("corrected")

        # History: the case is there as corrected; the status filter keeps or hides it.
        row = page.locator(f"[data-testid=history-row][data-case-id='{case_id}']")
        expect(row).to_be_visible()
        expect(row.locator("[data-testid=history-status-badge]")).to_have_text("Corrected")
        page.select_option("#history-status", "unreviewed")
        expect(row).to_have_count(0)
        page.select_option("#history-status", "corrected")
        expect(row).to_be_visible()
        row.scroll_into_view_if_needed()
        shoot("history")

        # Open it from the history, erase it (confirm the dialog), and it is gone.
        row.click()
        expect(page.locator("#case-id")).to_have_text(case_id)
        page.click("#erase-button")
        dialog = page.locator("#erase-dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text(case_id)
        shoot("erase-dialog", full_page=False)  # a modal: what the viewport shows
        page.click("#erase-confirm")
        expect(dialog).to_be_hidden()
        expect(row).to_have_count(0)
        expect(page.locator("#case-card")).to_be_hidden()
        expect(page.locator("#messages")).to_contain_text("Case erased")
        status, _ = call_api(url, token, f"/cases/{case_id}")
        assert status == 404, f"erased case {case_id} still answers {status}"
        page.select_option("#history-status", "")
        expect(page.locator(f"[data-case-id='{case_id}']")).to_have_count(0)
        shoot("erased")

        # Sign out forgets the token.
        page.click("#signout-button")
        expect(page.locator("#signin-view")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('skinedge.token')") is None

        violations = page.evaluate("window.__cspViolations")
        assert violations == [], f"CSP blocked: {violations}"
        assert errors == [], f"console errors: {errors}"
    finally:
        context.close()
