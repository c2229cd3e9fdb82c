"""The manager's console in real Chromium, served by the manager that `damselfly run` embeds.

A person's path through it: the sign-in form a visitor without a session gets; root seeing
the one-node cluster of `run` (its scheduler and seed peer, active, with the bytes served
of a blob just pulled through the node), kept live without reloading, and where that blob
is; root creating a guest and signing out; the guest finding every write either absent or
refused in words. The screenshot in docs/console.png is retaken when
DAMSELFLY_UPDATE_SCREENSHOT=1. And the preheat page: root starting a job from its form and
watching it end, its parts and their hosts, a cancel, a refusal in the manager's words, and
a guest who reads the jobs but cannot start or cancel one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from testkit.daemon import Damselfly
from testkit.images import build_image, push_image
from testkit.processes import wait_healthy
from testkit.registry import Registry, RegistryClient
from testkit.wait import free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
ROOT_PASSWORD = "console-test-root-password"
GUEST, GUEST_PASSWORD = "visitor", "visitor-password-12"
WAIT = 15  # seconds for any one thing to show; the console polls every 3
PREHEAT_WAIT = 90  # seconds for a preheat to end: the seed of `run` reads the image from the registry
FINAL_STATES = ("SUCCESS", "FAILURE", "CANCELLED")


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
    # A page redrawn by polling between finding an element and reading it: look again.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, f"the console did not show {what} within {timeout} s")


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


def submit_preheat(driver: WebDriver, url: str, cluster: str = "") -> None:
    form = wait(driver, lambda d: shown(d, "#new-preheat"), "the new-preheat form")
    field = form.find_element(By.NAME, "url")
    field.clear()
    field.send_keys(url)
    if cluster:
        option = wait(driver, lambda d: [o.text for o in form.find_elements(By.CSS_SELECTOR, "#preheat-cluster option")
                                         if o.text.startswith(cluster + " ")], f"cluster {cluster} in the form")
        Select(form.find_element(By.NAME, "cluster")).select_by_visible_text(option[0])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def click(driver: WebDriver, css: str, what: str) -> None:
    """Click what ``css`` finds once it shows, again if polling redrew it in between."""
    def clicked(d: WebDriver) -> bool:
        element = shown(d, css)
        if element is None:
            return False
        element.click()
        return True
    wait(driver, clicked, what)


def listed(driver: WebDriver) -> dict[str, dict[str, str]]:
    """The preheat list's jobs by id, their state and text, read at once (a poll may redraw it)."""
    rows = driver.execute_script("return [...document.querySelectorAll('#jobs-table tr[data-job-id]')]"
                                 ".map(r => [r.dataset.jobId, r.dataset.state, r.innerText])")
    return {job_id: {"state": state, "text": text} for job_id, state, text in rows}


def test_console_preheat_start_watch_cancel_and_a_guest_reads(node: Node, registry: Registry,
                                                              registry_client: RegistryClient,
                                                              browser: WebDriver) -> None:
    """Root starts a preheat of an image in the test's registry from the form and watches it
    reach SUCCESS in the list, then finds each of its manifests and blobs on the seed of
    `run`; a malformed reference is refused under the form in the manager's words, and the
    registry password typed with it is gone; a job no scheduler can take (its cluster has no
    member) is cancelled from its page; a guest sees the jobs but no form and no Cancel."""
    manager, api = node.console, f"{node.console}/api/v1"
    image = build_image("console/preheat", [512 * 1024])
    push_image(registry_client, image)
    reference = image.reference(registry.host)
    with httpx.Client(timeout=30) as client:
        token = client.post(f"{api}/users/signin", json={"name": "root", "password": ROOT_PASSWORD}).json()["token"]
        root = {"Authorization": f"Bearer {token}"}
        # A cluster no host joins (its one network is TEST-NET-1): a job there stays PENDING.
        created = client.post(f"{api}/clusters", json={"name": "empty", "scopes": {"cidrs": ["192.0.2.0/24"]}},
                              headers=root)
        assert created.status_code == 201, created.text
        empty = created.json()["id"]
        created = client.post(f"{api}/users", json={"name": GUEST, "password": GUEST_PASSWORD, "role": "guest"},
                              headers=root)
        assert created.status_code == 201, created.text
        wait_until(lambda: client.get(f"{api}/seed-peers", params={"state": "active"}, headers=root).json(),
                   WAIT * 2, "the seed peer of run registering")

        browser.get(manager + "/")
        sign_in(browser, "root", ROOT_PASSWORD)
        wait(browser, lambda d: shown(d, "header nav"), "the navigation")
        browser.find_element(By.CSS_SELECTOR, "header nav a[data-route=preheat]").click()
        wait(browser, lambda d: "No preheat jobs yet" in text_of(d, ".jobs-list"), "the empty list of jobs")
        form = wait(browser, lambda d: shown(d, "#new-preheat"), "the new-preheat form")
        assert form.find_element(By.NAME, "scope").get_attribute("value") == "single_seed_peer"
        assert not shown(browser, "#new-preheat [name=digest]")  # a file's only
        kind = Select(form.find_element(By.NAME, "type"))
        kind.select_by_value("file")
        assert shown(browser, "#new-preheat [name=digest]") and not shown(browser, "#new-preheat [name=platform]")
        kind.select_by_value("image")

        # A malformed reference: the manager's one-line refusal under the form; the password
        # typed with it is gone from the form and was never stored or put in the address.
        form.find_element(By.CSS_SELECTOR, "#preheat-credentials summary").click()
        form.find_element(By.NAME, "username").send_keys("someone")
        form.find_element(By.NAME, "password").send_keys("registry-secret-password")
        submit_preheat(browser, "not a reference")
        error = wait(browser, lambda d: text_of(d, "#preheat-error"), "the manager's refusal under the form")
        assert "url" in error and "\n" not in error, error
        assert form.find_element(By.NAME, "password").get_attribute("value") == ""
        assert "registry-secret-password" not in browser.current_url
        assert browser.execute_script("return localStorage.length") == 0
        assert browser.execute_script("return Object.keys(sessionStorage)") == ["damselfly.console.token"]
        assert client.get(f"{api}/jobs", headers=root).json() == []
        form.find_element(By.NAME, "username").clear()

        # The image onto the seed of `run` (in its cluster: every cluster would include the
        # empty one): listed at once, then SUCCESS with every copy placed.
        submit_preheat(browser, reference, cluster="default")
        [(job_id, job)] = wait(browser, listed, "the new job in the list").items()
        assert reference in job["text"] and "single seed peer" in job["text"], job
        assert not text_of(browser, "#preheat-error")
        assert f"Preheat job #{job_id} started" in text_of(browser, ".notice.ok")
        browser.execute_script("window.stillTheSamePage = true")
        wait(browser, lambda d: listed(d)[job_id]["state"] in FINAL_STATES, "the job ending", timeout=PREHEAT_WAIT)
        job = listed(browser)[job_id]
        assert job["state"] == "SUCCESS", job
        blobs = 2 + len(image.layers)  # the manifest, the config and each layer, on one seed
        assert f"{blobs}/{blobs} placed" in job["text"], job
        assert not browser.find_elements(By.CSS_SELECTOR, "#jobs-table button.cancel-job")  # it ended
        assert browser.execute_script("return window.stillTheSamePage === true")  # polled, not reloaded

        # Its page: each part on the seed peer, its hosts opening below it.
        click(browser, f"#jobs-table a[href='#/preheat?job={job_id}']", "the job's link")
        wait(browser, lambda d: shown(d, "#job-blobs tbody[data-digest]"), "the job's blobs")
        assert "SUCCESS" in text_of(browser, "#job-state")
        assert reference in text_of(browser, ".job-facts")
        parts = {b.get_attribute("data-digest"): b
                 for b in browser.find_elements(By.CSS_SELECTOR, "#job-blobs > tbody")}
        wanted = {image.manifest_digest, "sha256:" + hashlib.sha256(image.config).hexdigest(),
                  *(layer.digest for layer in image.layers)}
        assert set(parts) == wanted, parts.keys()
        manifest = parts[image.manifest_digest]
        assert "manifest" in manifest.text and "1/1 hosts done" in manifest.text, manifest.text
        biggest = max(image.layers, key=lambda layer: len(layer.data))
        layer = parts[biggest.digest]
        assert "KiB" in layer.text and "1/1 hosts done" in layer.text, layer.text
        assert not layer.find_element(By.CSS_SELECTOR, "tr.hosts-row").is_displayed()
        toggle = layer.find_element(By.CSS_SELECTOR, "button.toggle")
        assert toggle.get_attribute("aria-expanded") == "false"
        toggle.click()
        host = wait(browser, lambda d: shown(d, f"#job-blobs tbody[data-digest='{biggest.digest}'] tr[data-host-id]"),
                    "the hosts of a layer")
        assert toggle.get_attribute("aria-expanded") == "true"
        seeds = client.get(f"{api}/seed-peers", headers=root).json()
        assert host.get_attribute("data-host-id") in {seed["host_id"] for seed in seeds}, host.text
        assert "done" in host.text, host.text
        assert not shown(browser, "button.cancel-job")

        # A job in a cluster no scheduler serves stays PENDING; root cancels it from its page.
        browser.find_element(By.CSS_SELECTOR, ".back a").click()
        submit_preheat(browser, reference, cluster="empty")
        [(stuck, pending)] = wait(browser, lambda d: {k: v for k, v in listed(d).items() if k != job_id},
                                  "the second job").items()
        assert pending["state"] in ("PENDING", "RUNNING"), pending
        click(browser, f"#jobs-table a[href='#/preheat?job={stuck}']", "the second job's link")
        cancel = wait(browser, lambda d: shown(d, "button.cancel-job"), "the Cancel button of a pending job")
        assert "empty" in text_of(browser, ".job-facts [data-key=clusters]")
        cancel.click()
        assert cancel.text == "Really cancel?"
        cancel.click()
        wait(browser, lambda d: "CANCELLED" in text_of(d, "#job-state"), "the job cancelled")
        assert f"Preheat job #{stuck} cancelled" in text_of(browser, ".notice.ok")
        assert not shown(browser, "button.cancel-job")
        assert client.get(f"{api}/jobs/{stuck}", headers=root).json()["state"] == "CANCELLED"

        # A guest: both jobs, in their states, but no form and no Cancel.
        active = client.post(f"{api}/jobs", headers=root, json={"type": "preheat", "cluster_ids": [empty],
                                                                 "args": {"type": "image", "url": reference}})
        assert active.status_code == 201, active.text
        browser.find_element(By.ID, "signout").click()
        sign_in(browser, GUEST, GUEST_PASSWORD)
        wait(browser, lambda d: shown(d, "#readonly-note"), "the guest's read-only note")
        browser.get(manager + "/#/preheat")
        jobs = wait(browser, lambda d: len(listed(d)) == 3 and listed(d), "the three jobs for the guest")
        states = {key: job["state"] for key, job in jobs.items()}
        assert states[job_id] == "SUCCESS" and states[stuck] == "CANCELLED", states
        assert states[str(active.json()["id"])] in ("PENDING", "RUNNING"), states
        assert not browser.find_elements(By.CSS_SELECTOR, "#new-preheat, button.cancel-job")
        browser.get(f"{manager}/#/preheat?job={active.json()['id']}")
        wait(browser, lambda d: shown(d, ".job-facts"), "a job's page for the guest")
        assert not browser.find_elements(By.CSS_SELECTOR, "button.cancel-job")
