"""The manager's console in real Chromium against a real manager process.

A person's path through it: the sign-in form a visitor without a session gets, root
seeing the cluster with its schedulers, seed peers and peers (kept live without reloading),
root creating a guest, signing out, and the guest finding every write either absent or
refused in words. The screenshot in docs/console.png is retaken when
DAMSELFLY_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from testkit.processes import stop_process, wait_healthy
from testkit.wait import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
ROOT_PASSWORD = "console-test-root-password"
GUEST, GUEST_PASSWORD = "visitor", "visitor-password-12"
WAIT = 15  # seconds for any one thing to show; the console polls every 3


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[str]:
    """A real ``damselfly manager`` on a loopback port; its URL."""
    port = free_port()
    log_path = tmp_path / "manager.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "damselfly", "manager", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path / "manager")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(process, url, "damselfly manager", lambda: log_path.read_text(errors="replace"))
    yield url
    stop_process(process)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not shutil.which(path):
            raise RuntimeError(f"the console test needs {path}: apt-get install {package} (scripts/test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,860", "--lang=en-US", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition, what: str, timeout: float = WAIT):
    return WebDriverWait(driver, timeout).until(condition, f"the console did not show {what} within {timeout} s")


def shown(driver: WebDriver, css: str) -> WebElement | None:
    found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
    return found[0] if found else None


def text_of(driver: WebDriver, css: str) -> str:
    element = shown(driver, css)
    return element.text if element else ""


def sign_in(driver: WebDriver, name: str, password: str) -> None:
    form = wait(driver, lambda d: shown(d, "#signin-form"), "the sign-in form")
    field = form.find_element(By.NAME, "name")
    field.clear()
    field.send_keys(name)
    secret = form.find_element(By.CSS_SELECTOR, "input[type=password]")
    secret.clear()
    secret.send_keys(password)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def register(client: httpx.Client, api: str, kind: str, host: str, port: int, **where: str) -> int:
    """A component's registration, as a scheduler or daemon makes it (allowed on loopback without --tls-dir)."""
    answer = client.post(f"{api}/components", json={"kind": kind, "host_id": host, "url": f"http://127.0.0.1:{port}",
                                                     "cluster": "default", **where})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def test_console_sign_in_live_clusters_and_a_guest_refused(manager: str, browser: WebDriver, tmp_path: Path) -> None:
    api = f"{manager}/api/v1"
    with httpx.Client(timeout=10) as client:
        register(client, api, "scheduler", "node-1", 8002, idc="dc-a", location="eu|paris")
        peer = register(client, api, "peer", "node-1", 65002, idc="dc-a", location="eu|paris")
        register(client, api, "seed-peer", "seed-1", 65012, idc="dc-a", location="eu|paris")
        assert client.post(f"{api}/components/{peer}/keepalive",
                           json={"uploaded_bytes": 3 * 1024 * 1024, "served_bytes": 5 * 1024 * 1024}).status_code == 200

        # A visitor without a session: the sign-in form, a real password field, and nothing
        # loaded from anywhere but the manager.
        browser.get(manager + "/")
        password = wait(browser, lambda d: shown(d, "input[type=password]"), "a password field")
        assert password.tag_name == "input" and password.get_attribute("type") == "password"
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(name.startswith(manager + "/") for name in resources), resources

        # A wrong password is said in the API's words.
        sign_in(browser, "root", "not-the-root-password")
        error = wait(browser, lambda d: text_of(d, "#signin-error"), "the sign-in error")
        assert "password" in error.lower(), error

        # Root: the cluster, its configuration and every member with state, IDC, location and bytes.
        sign_in(browser, "root", ROOT_PASSWORD)
        cluster = wait(browser, lambda d: shown(d, "section.cluster[data-name=default]"), "the default cluster")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.cluster[data-name=default] tbody tr")) == 3,
             "a scheduler, a seed peer and a peer")
        assert browser.execute_script("return sessionStorage.getItem('damselfly.console.token')")
        assert browser.execute_script("return localStorage.length") == 0
        peers = cluster.find_element(By.CSS_SELECTOR, "[data-kind=peers] tbody tr").text
        assert all(word in peers for word in ("active", "node-1", "dc-a", "eu|paris", "3.00 MiB", "5.00 MiB")), peers
        assert "active" in cluster.find_element(By.CSS_SELECTOR, "[data-kind=schedulers] tbody tr").text
        assert "seed-1" in cluster.find_element(By.CSS_SELECTOR, "[data-kind=seed-peers] tbody tr").text
        assert "Candidate parents" in cluster.find_element(By.CSS_SELECTOR, ".config").text

        # Live without reloading: a cluster created behind the page's back shows up in it.
        browser.execute_script("window.stillTheSamePage = true")
        token = client.post(f"{api}/users/signin", json={"name": "root", "password": ROOT_PASSWORD}).json()["token"]
        created = client.post(f"{api}/clusters", json={"name": "edge"}, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text
        wait(browser, lambda d: shown(d, "section.cluster[data-name=edge]"), "a cluster created elsewhere")
        assert browser.execute_script("return window.stillTheSamePage === true")

        if os.environ.get("DAMSELFLY_UPDATE_SCREENSHOT") == "1":
            browser.execute_script("window.scrollTo(0, 0)")
            assert browser.save_screenshot(str(SCREENSHOT))
        else:
            assert browser.save_screenshot(str(tmp_path / "console.png"))

        # Root creates a guest through the users page.
        browser.get(manager + "/#/users")
        form = wait(browser, lambda d: shown(d, "#create-user"), "the new-user form")
        form.find_element(By.NAME, "name").send_keys(GUEST)
        form.find_element(By.NAME, "password").send_keys(GUEST_PASSWORD)
        assert form.find_element(By.NAME, "role").get_attribute("value") == "guest"
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait(browser, lambda d: shown(d, f"#users-table tr[data-name={GUEST}]"), "the new guest in the users table")
        assert f"User “{GUEST}” created" in text_of(browser, ".notice.ok")

        # Signing out forgets the session.
        browser.find_element(By.ID, "signout").click()
        wait(browser, lambda d: shown(d, "input[type=password]"), "the sign-in form after signing out")
        assert browser.execute_script("return sessionStorage.getItem('damselfly.console.token')") is None

        # The guest: sees the clusters, is told it is read only, and finds no write action.
        sign_in(browser, GUEST, GUEST_PASSWORD)
        wait(browser, lambda d: shown(d, "section.cluster[data-name=default] [data-kind=peers] tbody tr"),
             "the clusters for the guest")
        assert "guest" in text_of(browser, "#role")
        assert "only root can change" in text_of(browser, "#readonly-note")
        assert not browser.find_elements(By.CSS_SELECTOR, "#create-cluster, section.cluster .actions button")
        nav = browser.find_element(By.CSS_SELECTOR, "header nav").text
        assert "Clusters" in nav and "Users" not in nav and "Audit" not in nav

        # A root-only page reached by its address shows the manager's refusal, in its words.
        browser.get(manager + "/#/users")
        refusal = wait(browser, lambda d: text_of(d, ".refusal").startswith("The manager refused:")
                       and text_of(d, ".refusal"), "the refusal of the users page")
        assert "guest" in refusal, refusal
        assert not shown(browser, "#create-user")

        # And a write the page does not offer, sent with the guest's own session, is refused.
        answer = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('api/v1/clusters', {method: 'POST', headers: {'Content-Type': 'application/json',
                  Authorization: 'Bearer ' + sessionStorage.getItem('damselfly.console.token')},
                  body: JSON.stringify({name: 'sneaky'})})
              .then(async r => done([r.status, await r.json()]), e => done([0, String(e)]));
        """)
        assert answer[0] == 403 and answer[1]["error"], answer
