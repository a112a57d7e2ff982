"""The app in a real browser: headless Chromium opens every tab, checks its controls, saves a screenshot.

Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them);
skipped where they are missing. Screenshots go to $STUDIO_SCREENSHOTS (default:
the test's temporary folder).
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from test_ui import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (apt)")

TABS = {
    "Compare": ["Prompt", "Negative prompt", "Seed", "Random seed", "Steps", "Guidance", "Scheduler", "Compare",
                "Send the selected image to img2img", "Recent runs"],
    "img2img": ["Input image", "Strength", "Prompt", "Scheduler", "Run img2img"],
    "Train a student": ["Teacher", "Student", "Parameters and MACs", "Data", "Learning rate", "λ feature KD",
                        "Start training", "Cancel", "Resume", "Loss terms", "ZeroGPU"],
    "DreamBooth": ["Photos", "Identifier", "Class", "Models to personalize", "Finetuning", "Start DreamBooth",
                   "Generate with the personalized models"],
    "Evaluate": ["Prompt file", "Images per model", "Start evaluation", "Quality against U-Net latency and MACs"],
    "Models": ["toy-teacher", "nota-ai/bk-sdm-tiny"],
}


def test_every_tab_shows_its_controls(tiny_catalog, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from studio.ui.app import build_app

    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    app = build_app(tiny_catalog, family="tiny", data_dir=tmp_path / "data")
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "BK-SDM Studio" in d.find_element(By.TAG_NAME, "body").text)
        for tab, labels in TABS.items():
            button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == tab)
            button.click()
            try:
                wait.until(lambda d: all(label in d.find_element(By.TAG_NAME, "body").text for label in labels))
            finally:
                driver.save_screenshot(str(shots / f"tab-{tab.replace(' ', '-').lower()}.png"))
            body = driver.find_element(By.TAG_NAME, "body").text
            missing = [label for label in labels if label not in body]
            assert not missing, f"tab {tab}: not visible: {missing}"
        time.sleep(0.5)
        assert (shots / "tab-compare.png").stat().st_size > 10_000
    finally:
        driver.quit()
        app.close()
