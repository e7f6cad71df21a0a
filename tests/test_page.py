"""The search page in a real headless browser (Debian's chromium and its driver): a search shows results, a
dropped sound gets tags, a question about a dropped picture gets its answer streamed in. Screenshots are written
to test-artifacts/ (or $SENSORIUM_ARTIFACTS)."""

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver

from helpers import FIXTURES
from test_service import AST, Server, free_port

MEDIA = FIXTURES / "media"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("SENSORIUM_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))

if CHROMIUM is None or DRIVER is None:  # .ci/run installs them; a run without them must say so, not pass
    pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)", pytrace=False)


@pytest.fixture(scope="module")
def collection(tiny_entries, tmp_path_factory):
    import sensorium as sn

    folder = tmp_path_factory.mktemp("photos")
    for name in ("cat.png", "dog_small.png", "dog.mp4"):
        shutil.copyfile(MEDIA / name, folder / name)
    db = str(tmp_path_factory.mktemp("page-db") / "index")
    report = sn.Index(db, image_model="test-clip_tiny", device="cpu").add([str(folder)])
    assert report.ok and len(report.indexed) == 3, report.failed
    return folder, db


@pytest.fixture(scope="module")
def page(collection, tiny_entries, ast_models, hf_cache):
    from selenium.webdriver.chrome.service import Service as DriverService

    from helpers import put_in_hf_cache
    from sensorium.service import ServeConfig

    folder = FIXTURES / "plm" / "plm_1b_tiny"
    put_in_hf_cache(hf_cache, "facebook/Perception-LM-1B", {p.name: p for p in folder.iterdir() if p.is_file()})
    config = ServeConfig(port=free_port(), models=("test-clip_tiny", AST, "Perception-LM-1B"), device="cpu",
                         db=collection[1])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    with Server(config) as running:
        driver = webdriver.Chrome(options=options, service=DriverService(DRIVER))
        driver.set_page_load_timeout(60)
        try:
            driver.get(running.url + "/")
            yield driver, running
        finally:
            driver.quit()


def _wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _drop(driver, path):
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "file")
    driver.execute_script("arguments[0].hidden = false;", field)
    field.send_keys(str(path))
    _wait(driver, lambda d: not d.find_element(By.ID, "actions").get_attribute("hidden"))


def test_search_shows_results(page):
    from selenium.webdriver.common.by import By

    driver, _ = page
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys("a cat")
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    hits = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".hit"))
    paths = [h.get_attribute("data-path") for h in hits]
    assert len(paths) == 3 and any(p.endswith("cat.png") for p in paths)
    # thumbnails load: images, and the video's frame at its matching moment
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "page-search.png"))
    card = next(h for h in hits if h.get_attribute("data-path").endswith("dog.mp4"))
    thumb = card.find_element(By.CSS_SELECTOR, "img")
    moment = thumb.get_attribute("src").split("&t=")[1]
    thumb.click()  # a click puts the player there, starting at the moment
    video = _wait(driver, lambda d: card.find_elements(By.CSS_SELECTOR, "video"))[0]
    assert video.get_attribute("src").endswith("#t=" + moment)
    assert driver.find_element(By.ID, "actions").get_attribute("hidden") is not None  # nothing dropped yet
    assert not driver.find_element(By.ID, "actions").is_displayed()
    assert (ARTIFACTS / "page-search.png").stat().st_size > 1000


def test_a_dropped_sound_gets_tags(page):
    from selenium.webdriver.common.by import By

    driver, _ = page
    _drop(driver, MEDIA / "speech.wav")
    driver.find_element(By.CSS_SELECTOR, "#actions button[data-action=tag]").click()
    tags = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#tags li"))
    assert len(tags) == 5 and all(t.text for t in tags)


def test_an_answer_streams_in(page):
    from selenium.webdriver.common.by import By

    driver, running = page
    model = running.service.registry.get("Perception-LM-1B")
    want = model.chat([{"role": "user", "content": [{"type": "image", "image": str(MEDIA / "cat.png")},
                                                    {"type": "text", "text": "What is this?"}]}], max_new_tokens=256)
    _drop(driver, MEDIA / "cat.png")
    driver.find_element(By.ID, "question").send_keys("What is this?")
    # record the answer's text as it grows
    driver.execute_script("""
        window.seen = [];
        new MutationObserver(() => window.seen.push(document.getElementById('answer').textContent))
            .observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});""")
    driver.find_element(By.CSS_SELECTOR, "#actions button[data-action=ask]").click()
    _wait(driver, lambda d: d.find_element(By.ID, "status").text in ("answered",) or
          "error" in (d.find_element(By.ID, "status").get_attribute("class") or ""))
    assert driver.find_element(By.ID, "status").text == "answered", driver.find_element(By.ID, "status").text
    assert driver.execute_script("return document.getElementById('answer').textContent") == want
    seen = [s for s in driver.execute_script("return window.seen") if s]
    assert len(set(seen)) > 1 or len(want) <= 1  # it arrived in pieces
    driver.save_screenshot(str(ARTIFACTS / "page-answer.png"))
