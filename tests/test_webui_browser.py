"""The web UI in a real browser: a server on loopback (``python -m jakiro.application.webui``, SmolLM2 in fp32 with
the echo draft of tests/echo_draft.py, so that the target accepts draft tokens deterministically) driven by headless
Chromium through Selenium and the distribution's chromedriver (``scripts/install_browser.sh`` installs both).

Skips, saying why, when gradio, selenium, Chromium or chromedriver is missing. The screenshot path is printed
(``pytest -s``) and attached as the test's ``screenshot`` property.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jakiro.common.assets import ensure_smollm2
from echo_draft import write_echo_draft

pytest.importorskip("gradio", reason="the web UI needs the webui extra (gradio)")
pytest.importorskip("selenium", reason="the browser test needs selenium (test extra)")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REPEAT_PROMPT = "Type 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'"  # SmolLM2's greedy answer repeats "zz" tokens
SERVER_START_S = 600  # model loading and warm-up on a busy CPU
ANSWER_S = 300


def find_browser() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium / chromedriver (Debian: apt-get install chromium chromium-driver; "
                    "or bash scripts/install_browser.sh)")
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_paths():
    return find_browser()


@pytest.fixture(scope="module")
def server(browser_paths, tmp_path_factory):
    """URL of a web UI server started for this module; its log is shown if it fails to come up."""
    base = ensure_smollm2(progress=False)
    draft = write_echo_draft(base, tmp_path_factory.mktemp("echo_draft"))
    port = free_port()
    log_path = tmp_path_factory.mktemp("webui") / "server.log"
    command = [sys.executable, "-m", "jakiro.application.webui", "--set", "model.dtype=float32",
               "--ea_model_path", str(draft), "--max_new_token", "24", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the web UI exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the web UI did not answer within {SERVER_START_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(server, browser_paths):
    """A headless Chromium tab on a fresh session of the UI."""
    browser, driver_path = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium does not start here: {err.msg}")
    try:
        driver.get(server)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jk-input textarea"))
        yield driver
    finally:
        driver.quit()


def field(driver, elem_id: str) -> str:
    """The value of a gradio textbox."""
    return driver.execute_script(
        "const e = document.querySelector(`#${arguments[0]} textarea, #${arguments[0]} input`);"
        "return e ? e.value : null;", elem_id)


def send(driver, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#jk-input textarea")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_done(driver, word: str = "done") -> str:
    """Wait for the status "<word>: N tokens in T s" that ends an answer."""
    WebDriverWait(driver, ANSWER_S).until(lambda d: (field(d, "jk-status") or "").startswith(f"{word}:"))
    return field(driver, "jk-status")


def accepted_spans(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#jk-chat .jk-accepted")


def test_answer_streams_with_speed_ratio_and_highlighted_accepted_tokens(page, tmp_path_factory, record_property):
    send(page, REPEAT_PROMPT)
    status = wait_done(page)
    speed, ratio = field(page, "jk-speed"), field(page, "jk-ratio")
    assert float(speed) > 0, f"speed field: {speed!r}"
    assert float(ratio) > 1, f"compression ratio field: {ratio!r} (the echo draft must get tokens accepted)"
    assert float(field(page, "jk-accepted-per-step")) > 0
    chat = page.find_element(By.ID, "jk-chat").text
    assert REPEAT_PROMPT in chat and "zzzz" in chat.split(REPEAT_PROMPT, 1)[1]
    assert f"τ {ratio}" in chat  # the answer's own τ, the same number
    spans = accepted_spans(page)
    assert spans, "no highlighted accepted draft tokens"
    assert all(s.text and s.text in chat for s in spans)
    screenshot = tmp_path_factory.mktemp("screenshots") / "webui-answer.png"
    assert page.save_screenshot(str(screenshot))
    record_property("screenshot", str(screenshot))
    print(f"\nweb UI screenshot ({status}, speed {speed} tokens/s, τ {ratio}): {screenshot}")

    page.find_element(By.CSS_SELECTOR, "#jk-highlight input").click()  # highlighting off: same text, no spans
    WebDriverWait(page, 30).until(lambda d: not accepted_spans(d))
    assert page.find_element(By.ID, "jk-chat").text == chat
    page.find_element(By.CSS_SELECTOR, "#jk-highlight input").click()
    WebDriverWait(page, 30).until(lambda d: len(accepted_spans(d)) == len(spans))


def set_number(driver, elem_id: str, value: int) -> None:
    """Type into the number box of a gradio slider and leave it (which applies the value)."""
    selector = f"#{elem_id} input[type=number]"
    box = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, selector))  # accordion opening
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_plain_decoding_regenerate_clear_and_tree_settings(page):
    page.find_element(By.CSS_SELECTOR, "#jk-speculative input").click()  # plain decoding
    send(page, "<b>Hi</b>")
    wait_done(page)
    assert field(page, "jk-ratio") == "1.00" and not accepted_spans(page)
    chat = page.find_element(By.ID, "jk-chat")
    assert "<b>Hi</b>" in chat.text and not chat.find_elements(By.TAG_NAME, "b")  # shown as text, not markup
    first = chat.text
    assert first.endswith("plain decoding")
    page.find_element(By.ID, "jk-regenerate").click()
    wait_done(page, "regenerated")
    again = page.find_element(By.ID, "jk-chat").text  # greedy: the same single answer again (other timing)
    assert again.count("τ ") == 1 and again.rsplit("\n", 1)[0] == first.rsplit("\n", 1)[0]
    page.find_element(By.ID, "jk-clear").click()
    WebDriverWait(page, 30).until(lambda d: field(d, "jk-status") == "ready")
    assert "Hi" not in page.find_element(By.ID, "jk-chat").text and field(page, "jk-speed") == ""

    page.find_element(By.CSS_SELECTOR, "#jk-speculative input").click()  # speculative again, with another tree
    page.find_element(By.XPATH, "//button[contains(., 'Draft tree')]").click()
    set_number(page, "jk-total-token", 8)
    set_number(page, "jk-depth", 2)
    set_number(page, "jk-top-k", 3)
    send(page, "Hi")
    wait_done(page)
    assert page.find_element(By.ID, "jk-chat").text.endswith("Jakiro (tree 8/2/3)")
