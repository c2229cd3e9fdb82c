"""The manager's console in real Chromium, served by the manager that `damselfly run` embeds.

A person's path through it: the sign-in form a visitor without a session gets; root seeing
the one-node cluster of `run` (its scheduler and seed peer, active, with the bytes served
of a blob just pulled through the node), kept live without reloading, and where that blob
is; root creating a guest and signing out; the guest finding every write either absent or
refused in words. The screenshot in docs/console.png is retaken when
DAMSELFLY_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
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

from testkit.daemon import Damselfly
from testkit.processes import wait_healthy
from testkit.registry import Registry, RegistryClient
from testkit.wait import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
ROOT_PASSWORD = "console-test-root-password"
GUEST, GUEST_PASSWORD = "visitor", "visitor-password-12"
WAIT = 15  # seconds for any one thing to show; the console polls every 3


@dataclass
class Node:
    url: str  # the mirror
    console: str  # the embedded manager: its API and console


@pytest.fixture
def node(tmp_path: Path, registry: Registry) -> Iterator[Node]:
    """A real `damselfly run` with its manager on a free loopback port."""
    console = f"127.0.0.1:{free_port()}"
    run = Damselfly(tmp_path / "node", ["--registry", f"{registry.host}={registry.url}"], manager_listen=console,
                    env={"DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD})
    run.start()
    try:
        wait_healthy(run.process, f"http://{console}", "the manager of damselfly run", run.log)
        yield Node(run.url, f"http://{console}")
    finally:
        run.stop()


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


def test_console_sign_in_live_cluster_and_a_guest_refused(node: Node, registry: Registry,
                                                          registry_client: RegistryClient, browser: WebDriver,
                                                          tmp_path: Path) -> None:
    manager, api = node.console, f"{node.console}/api/v1"
    blob = os.urandom(3 * 1024 * 1024)
    digest = registry_client.push_blob("console/blob", blob)
    with httpx.Client(timeout=30) as client:
        pulled = client.get(f"{node.url}/v2/console/blob/blobs/{digest}", params={"ns": registry.host})
        assert pulled.status_code == 200 and pulled.content == blob

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

        # Root: the one-node cluster of `run`, its configuration, and its members with state,
        # address, keepalive and, once a keepalive has carried them, the bytes served.
        sign_in(browser, "root", ROOT_PASSWORD)
        cluster = wait(browser, lambda d: shown(d, "section.cluster[data-name=default]"), "the default cluster")
        assert browser.execute_script("return sessionStorage.getItem('damselfly.console.token')")
        assert browser.execute_script("return localStorage.length") == 0
        members = "section.cluster[data-name=default] [data-kind={}] tbody tr"
        scheduler = wait(browser, lambda d: shown(d, members.format("schedulers")), "the scheduler")
        assert "active" in scheduler.text and "127.0.0.1" in scheduler.text, scheduler.text
        seed = wait(browser, lambda d: "3.00 MiB" in text_of(d, members.format("seed-peers"))
                    and shown(d, members.format("seed-peers")),
                    "the seed peer with the 3 MiB it served", timeout=WAIT + 10)  # a keepalive every 5 s
        assert "active" in seed.text, seed.text
        assert "Candidate parents" in cluster.find_element(By.CSS_SELECTOR, ".config").text

        # Live without reloading: a cluster created behind the page's back shows up in it.
        browser.execute_script("window.stillTheSamePage = true")
        token = client.post(f"{api}/users/signin", json={"name": "root", "password": ROOT_PASSWORD}).json()["token"]
        created = client.post(f"{api}/clusters", json={"name": "edge"}, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text
        wait(browser, lambda d: shown(d, "section.cluster[data-name=edge]"), "a cluster created elsewhere")
        assert browser.execute_script("return window.stillTheSamePage === true")
        browser.execute_script("window.scrollTo(0, 0)")

        if os.environ.get("DAMSELFLY_UPDATE_SCREENSHOT") == "1":
            assert browser.save_screenshot(str(SCREENSHOT))
        else:
            assert browser.save_screenshot(str(tmp_path / "console.png"))

        # Where the blob is: the seed peer of `run` holds all of it, as its scheduler says.
        browser.get(f"{manager}/#/tasks?q={digest}")
        holder = wait(browser, lambda d: shown(d, f".blob[data-digest='{digest}'] tbody tr"),
                      "the peers holding the blob")
        assert "whole blob" in holder.text, holder.text
        assert "answered" in text_of(browser, ".asked")

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
        wait(browser, lambda d: shown(d, members.format("schedulers")), "the clusters for the guest")
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
