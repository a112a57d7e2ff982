"""The app in a real browser, as a visitor uses it in public mode: compare two models, start a training job, reload,
find it again (the visitor cookie), and, as another visitor (no cookie), not see it.

Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them);
skipped where they are missing. Screenshots go to $STUDIO_SCREENSHOTS (default:
the test's temporary folder).
"""

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import serve_app
from studio.jobs.cpu import machine_threads
from studio.ui.hosting import Hosting

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (apt)")]

RECENT = "Recent runs (PNGs carry their settings)"
GALLERY = "Same prompt and seed; each image forms live"
TABS = {
    "Compare": ["Prompt", "Negative prompt", "Seed", "Random seed", "Recipe", "Steps", "Guidance", "Scheduler",
                "Guidance stop", "Cache interval", "Token merging", "Decoder", "Precision", "Grid: recipes across",
                "Send the selected image to img2img", "Recent runs"],
    "img2img": ["Input image", "Strength", "Prompt", "Scheduler", "Run img2img"],
    "Train a student": ["Teacher", "Student", "Parameters and MACs", "Data", "Learning rate", "λ feature KD",
                        "Start training", "Cancel", "Resume", "Jobs (state on disk", "ZeroGPU"],
    "DreamBooth": ["Photos", "Identifier", "Class", "Models to personalize", "Finetuning", "Start DreamBooth",
                   "Generate with the personalized models"],
    "Evaluate": ["Prompt file", "Images per model", "Start evaluation", "Quality against U-Net latency and MACs"],
    "Models": ["toy-teacher", "nota-ai/bk-sdm-tiny"],
}


@pytest.fixture
def browser(tiny_catalog, tmp_path):
    """(driver, page url, screenshot folder, data folder) with the app on the tiny family, in public mode."""
    with open_browser(tiny_catalog, "tiny", tmp_path, Hosting(public=True, max_steps=1_000_000)) as opened:
        yield opened


@contextmanager
def open_browser(catalog, family, tmp_path, hosting=None):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,2600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    # The browser gets a core of its own: the app's CPU budget is the rest (studio/jobs/cpu.py).
    hosting = replace(hosting or Hosting(public=False), threads=max(1, machine_threads() - 1))
    try:
        with serve_app(catalog, tmp_path / "data", hosting=hosting, family=family) as url:
            yield driver, url, shots, tmp_path / "data"
    finally:
        driver.quit()


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def click(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    element = next(e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == text)
    driver.execute_script("arguments[0].click()", element)


def images_in(driver, label: str) -> int:
    """Images inside the block whose label is `label` (a gallery)."""
    from selenium.webdriver.common.by import By

    block = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{label}']/ancestor::div[contains(@class,"
                                          "'block')][1]")
    return len(block.find_elements(By.TAG_NAME, "img"))


def loss_plot(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, "//*[normalize-space(text())='Loss terms']/ancestor::div[contains(@class,"
                                         "'block')][1]")


def colored_pixels(element) -> int:
    """Strongly colored pixels in a screenshot of `element`."""
    import io

    import numpy as np
    from PIL import Image

    element.parent.execute_script("arguments[0].scrollIntoView()", element)
    hsv = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("HSV"))
    return int(((hsv[..., 1] > 100) & (hsv[..., 2] > 80)).sum())


class ProgressWait:
    """`until(condition)` while the page moves: it fails when nothing on the page has changed for `stall` seconds
    (or after `limit`), not after a fixed time. A slower machine is slower, not stuck (a fresh clone's 90 s wait ran
    out on one); a progress bar, a step counter or a new image all count as progress."""

    def __init__(self, driver, stall: float = 180.0, limit: float = 1800.0, poll: float = 0.5):
        self.driver, self.stall, self.limit, self.poll = driver, stall, limit, poll

    def _page(self) -> str:
        from selenium.webdriver.common.by import By

        return body(self.driver) + str(len(self.driver.find_elements(By.TAG_NAME, "img")))

    def until(self, condition):
        from selenium.common.exceptions import TimeoutException, WebDriverException

        started = changed = time.monotonic()
        last = None
        while True:
            try:
                if condition(self.driver):
                    return
                page = self._page()
            except WebDriverException:  # an element replaced while read: look again
                page = last
            now = time.monotonic()
            if page != last:
                last, changed = page, now
            if now - changed > self.stall or now - started > self.limit:
                raise TimeoutException(f"the page did not change for {now - changed:.0f} s "
                                       f"({now - started:.0f} s in all) before the condition held")
            time.sleep(self.poll)


def open_page(driver, url):
    driver.get(url)
    wait = ProgressWait(driver)
    wait.until(lambda d: "BK-SDM Studio" in body(d))
    return wait


def test_every_tab_shows_its_controls(browser):
    driver, url, shots, _ = browser
    wait = open_page(driver, url)
    for tab, labels in TABS.items():
        click(driver, "button[role='tab']", tab)
        try:
            wait.until(lambda d: all(label in body(d) for label in labels))
        finally:
            driver.save_screenshot(str(shots / f"tab-{tab.replace(' ', '-').lower()}.png"))
        assert not [label for label in labels if label not in body(driver)], tab
    # The custom design fields show only for the custom student.
    click(driver, "button[role='tab']", "Train a student")
    assert "Custom: keep mid block" not in body(driver)
    click(driver, "label", "custom")
    wait.until(lambda d: "Custom: keep mid block" in body(d))


def test_a_visitor_compares_models_and_finds_a_training_job_after_a_reload(browser):
    from studio.jobs import JobManager

    driver, url, shots, data_dir = browser
    wait = open_page(driver, url)
    # Compare: both models of the family are ticked; one image and one readout row each.
    click(driver, "button.primary", "Compare")
    wait.until(lambda d: "| tiny-small" in d.page_source or ("tiny-small" in body(d) and "speed-up" in body(d)))
    # Both finished (a forming image shows in the gallery too, as a preview; finished ones join the history).
    wait.until(lambda d: images_in(d, RECENT) == 2 and images_in(d, GALLERY) == 2)
    text = body(driver)
    assert "U-Net calls" in text and "tiny-teacher" in text
    driver.save_screenshot(str(shots / "compare.png"))

    # Train: start a job from the page (the family's defaults: toy data, a long run), see it run.
    click(driver, "button[role='tab']", "Train a student")
    click(driver, "button.primary", "Start training")
    wait.until(lambda d: "started job" in body(d))
    job_id = next(word for word in body(driver).split() if word.count("-") == 2 and word[:8].isdigit()).rstrip(":")
    [jobs_root] = data_dir.glob("visitors/*/jobs")  # this browser's workspace

    # A reload: the job list is read again, the new job is selected, and its loss plot fills in.
    open_page(driver, url)
    wait.until(lambda d: images_in(d, RECENT) == 2)  # this visitor's images, listed again on load
    click(driver, "button[role='tab']", "Train a student")
    try:
        wait.until(lambda d: job_id in body(d) and "running, step" in body(d))
        # Three rows: lines to draw (the page's step counter moves meanwhile).
        wait.until(lambda d: JobManager(jobs_root).status(job_id).step >= 30)
        # Four colored lines across the plot (legend circles alone are ~100 colored pixels; axes and text are gray).
        wait.until(lambda d: colored_pixels(loss_plot(d)) > 400)
    finally:
        driver.save_screenshot(str(shots / "train-after-reload.png"))
    click(driver, "button", "Cancel")
    wait.until(lambda d: f"cancelling {job_id}" in body(d))
    assert JobManager(jobs_root).wait(job_id, timeout=180) == "cancelled"

    # Another visitor (this browser without its cookie) sees no jobs and none of the first one's images.
    driver.delete_all_cookies()
    open_page(driver, url)
    assert images_in(driver, RECENT) == 0
    click(driver, "button[role='tab']", "Train a student")
    wait.until(lambda d: "No jobs yet." in body(d))
    assert job_id not in body(driver)
    driver.save_screenshot(str(shots / "train-other-visitor.png"))


def test_a_grid_of_recipes_on_the_toy_world(catalog, tmp_path):
    """Models down, recipes across: the four toy models, each with `paper` and `fast`, in one click."""
    from selenium.webdriver.common.by import By

    with open_browser(catalog, "toy", tmp_path) as (driver, url, shots, _):
        wait = open_page(driver, url)
        for recipe in ("paper", "fast"):  # all four models are ticked
            click(driver, "label", recipe)
        click(driver, "button.primary", "Compare")
        try:
            wait.until(lambda d: images_in(d, RECENT) == 8 and images_in(d, GALLERY) == 8)
        finally:
            driver.save_screenshot(str(shots / "compare-grid.png"))
        readout = driver.find_element(By.XPATH, "//table[.//th[contains(., 'U-Net calls')]]").text
        rows = [line for line in readout.splitlines() if line.startswith("toy-")]
        assert [" ".join(row.split()[:2]) for row in rows] == [
            f"{model} {recipe}" for model in ("toy-teacher", "toy-bk-base", "toy-bk-small", "toy-bk-tiny")
            for recipe in ("paper", "fast")], readout
        assert "(tiny)" in readout and "(vae)" in readout  # fast decodes with the toy tiny decoder
        assert "reference" in readout and readout.count(" dB; 0.") == 6  # every student: PSNR; SSIM to the teacher
        # Selecting toy-bk-tiny's `paper` image shows it beside the teacher's: a wipe slider and a difference map.
        gallery = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{GALLERY}']/ancestor::div[contains("
                                                "@class,'block')][1]")
        driver.execute_script("arguments[0].click()", gallery.find_elements(By.TAG_NAME, "img")[6])
        try:
            wait.until(lambda d: "toy-bk-tiny against toy-teacher (paper" in body(d)
                       and images_in(d, "Difference from the teacher") >= 1)
        finally:
            driver.save_screenshot(str(shots / "compare-difference.png"))
        assert images_in(driver, "Teacher | selected student (same prompt, seed and recipe)") >= 2
        assert "SSIM" in body(driver)


def test_the_first_screen_on_the_toy_world(catalog, tmp_path):
    """A newcomer's first click, every default as shipped: Compare draws the family's prompt with the four toy models,
    and the teacher draws it right (the toy judge reads its image). Each tab is photographed
    (STUDIO_SCREENSHOTS=docs/screenshots writes the README's pictures)."""
    from selenium.webdriver.common.by import By

    from studio.inference.history import read_settings
    from studio.toy.judge import judge_images
    from studio.toy.prompts import parse

    with open_browser(catalog, "toy", tmp_path) as (driver, url, shots, data):
        wait = open_page(driver, url)
        click(driver, "button.primary", "Compare")
        wait.until(lambda d: images_in(d, RECENT) == 4 and images_in(d, GALLERY) == 4)
        gallery = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{GALLERY}']/ancestor::div[contains("
                                                "@class,'block')][1]")
        driver.execute_script("arguments[0].click()", gallery.find_elements(By.TAG_NAME, "img")[3])  # toy-bk-tiny
        try:
            wait.until(lambda d: "toy-bk-tiny against toy-teacher" in body(d))
        finally:
            driver.save_screenshot(str(shots / "compare.png"))
        assert "Drop Media Here" not in body(driver)  # an output offers no upload
        for tab in ("img2img", "Train a student", "DreamBooth", "Evaluate", "Models"):
            click(driver, "button[role='tab']", tab)
            wait.until(lambda d: all(label in body(d) for label in TABS[tab]))
            driver.save_screenshot(str(shots / f"tab-{tab.replace(' ', '-').lower()}.png"))
            if tab == "Evaluate":  # the shipped results come before the form
                assert body(driver).index("Shipped results") < body(driver).index("Run an evaluation")
    prompt = catalog.family("toy").prompt
    drawn = {read_settings(p)["model"]: p for p in (data / "history").rglob("*.png")}
    assert set(drawn) == {"toy-teacher", "toy-bk-base", "toy-bk-small", "toy-bk-tiny"}
    from PIL import Image

    verdicts = {model: judge_images([parse(prompt)], [Image.open(path).convert("RGB")])["overall"]
                for model, path in drawn.items()}
    print(f"the first screen, {prompt!r}: the judge's verdict per model {verdicts}")
    assert verdicts["toy-teacher"] == 1.0, verdicts
