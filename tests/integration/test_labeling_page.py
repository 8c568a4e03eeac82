"""The labeling page of an exported project, in a real browser (headless Chromium): the prompt and all K
candidates are on screen. The screenshot is kept in outputs/test-artifacts/."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from helpers import REPO, run_cli

from kuberlhf.data.formats import prompt_id
from kuberlhf.demo.task import Demonstrator, format_prompt

ARTIFACTS = REPO / "outputs" / "test-artifacts"


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian chromium and chromium-driver (make browser-install)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1400",
                 "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_task_of_an_exported_project_shows_the_prompt_and_every_candidate(tmp_path, label_studio, browser,
                                                                            monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from kuberlhf.feedback.labelstudio import Client

    demo = Demonstrator(11)
    question, topic = demo.question()
    prompt = format_prompt(question)
    row = {"id": prompt_id(0, prompt), "prompt": prompt, "candidates": [f" {demo.response(topic)} ({i})"
                                                                         for i in range(4)]}
    source = tmp_path / "candidates"
    source.mkdir()
    (source / "candidates.jsonl").write_text(json.dumps(row) + "\n")
    for key, value in label_studio.env().items():
        monkeypatch.setenv(key, value)
    title = f"page-{uuid.uuid4().hex[:8]}"
    assert run_cli(["feedback", "export", "--candidates", str(source), "--project", title,
                    "--instructions", str(REPO / "configs/feedback/ranking-instructions.html")]) == 0
    client = Client(label_studio.url, label_studio.token)
    project = client.find_project(title)
    (task,) = client.tasks(project["id"])

    wait = WebDriverWait(browser, 60)
    browser.get(f"{label_studio.url}/user/login/")
    wait.until(ec.presence_of_element_located((By.NAME, "email"))).send_keys(label_studio.email)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait.until(lambda d: "/user/login" not in d.current_url)
    browser.get(f"{label_studio.url}/projects/{project['id']}/data?task={task['id']}")
    wanted = [prompt.splitlines()[0], *[c.strip() for c in row["candidates"]]]
    try:
        wait.until(lambda d: all(text in d.find_element(By.TAG_NAME, "body").text for text in wanted))
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "labeling-page.png"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert all(text in body for text in wanted)
    assert "Rank the 4 responses, best first" in body
