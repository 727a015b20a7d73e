"""The page at ``/`` of ``psegzoo serve``, driven in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` with Selenium (browser downloads by Selenium
Manager cannot reach their hosts here). Where they are missing the tests skip, naming the two
packages; under CI (``CI`` set) they fail instead, so a broken set-up never passes as skips.
"""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

import psegzoo
from tests.support.hub import scrub_environment
from tests.support.serving import MODEL, OTHER, in_thread, random_image, serve_zoo
from tests.support.shared import in_ci

MISSING = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    paths = _browser_paths()
    if paths is None:
        if in_ci():
            pytest.fail(f"{MISSING}; CI is set, so a missing browser fails the test")
        pytest.skip(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    options.binary_location = paths[0]
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_page")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    zoo = serve_zoo(tmp)
    for key, value in zoo.env.items():
        mp.setenv(key, value)
    try:
        yield {name: psegzoo.load(name, progress=False) for name in (MODEL, OTHER)}
    finally:
        zoo.server.close()
        mp.undo()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("page_image") / "photo.png"
    Image.fromarray(random_image(7, (80, 120))).save(path)
    return path


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def _legend(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.find_element(By.CLASS_NAME, "name").text for li in driver.find_elements(By.CSS_SELECTOR, "#legend li")]


def _choose_models(driver, a: str, b: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-a option")) > 0)
    Select(_by_id(driver, "model-a")).select_by_value(a)
    Select(_by_id(driver, "model-b")).select_by_value(b)


def test_page_shows_overlay_and_legend_and_compares_two_models(browser, loaded, image_file):
    import requests

    with in_thread(loaded, models=(MODEL, OTHER)) as url:
        browser.get(url + "/")
        assert _by_id(browser, "token-form").is_displayed() is False
        _choose_models(browser, MODEL, OTHER)
        _by_id(browser, "file").send_keys(str(image_file))
        _wait(browser, lambda d: _legend(d))
        overlay = _by_id(browser, "overlay")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 120
        expected = requests.post(f"{url}/v1/predict", params={"model": MODEL, "format": "json"},
                                 data=image_file.read_bytes(), headers={"Content-Type": "image/png"}, timeout=60).json()
        assert _legend(browser) == [c["name"] for c in expected["classes"]]
        assert _by_id(browser, "legend-model").text == MODEL
        tabs = browser.find_elements("css selector", "#tabs .tab")
        assert [t.get_attribute("title") for t in tabs] == [MODEL, OTHER]
        tabs[1].click()
        _wait(browser, lambda d: _by_id(d, "legend-model").text == OTHER)
        assert _legend(browser)
        assert _by_id(browser, "error").is_displayed() is False


def test_page_asks_for_the_token_and_keeps_it_in_the_tab_only(browser, loaded, image_file):
    with in_thread(loaded, models=(MODEL,), token="s3cret") as url:
        browser.get(url + "/")
        browser.execute_script("sessionStorage.clear(); localStorage.clear();")
        browser.get(url + "/")
        _wait(browser, lambda d: _by_id(d, "token-form").is_displayed())
        _by_id(browser, "token").send_keys("s3cret")
        _by_id(browser, "token-use").click()
        _wait(browser, lambda d: not _by_id(d, "token-form").is_displayed())
        _by_id(browser, "file").send_keys(str(image_file))
        _wait(browser, lambda d: _legend(d))
        stored = browser.execute_script("return [sessionStorage.getItem('psegzoo-token'), localStorage.length, "
                                        "document.cookie]")
        assert stored == ["s3cret", 0, ""]
