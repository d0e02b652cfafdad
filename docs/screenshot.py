#!/usr/bin/env python3
"""The screenshot of the chat page in docs/serving.md (docs/chat-page.png): `chitchat serve` on a
model, a short Chinese conversation typed into the page in headless Chromium, the last reply's
candidates view open, the page saved as a PNG.

Needs Chromium and its driver (`make browser`, or Debian's `chromium` and `chromium-driver`), the
`browser` extra (Selenium; `make install` has it) and a font with Chinese characters (Debian:
`fonts-wqy-microhei` or `fonts-noto-cjk`), else the characters show as boxes.

    .venv/bin/python docs/screenshot.py                     # the default model (models/default)
    .venv/bin/python docs/screenshot.py --model runs/dialogue --mmi-model runs/mmi -- --candidates 3
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from local_server import free_port, start_serve, wait_ready  # noqa: E402  (bench/: the serve benches' helpers)

MESSAGES = ["你好", "今天天气真好", "周末一起去爬山吧"]
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1"]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = ["--port", str(port), "--log-level", "warning", "--threads", "1"]
    if args.model:
        cmd += ["--model", args.model] + (["--mmi-model", args.mmi_model] if args.mmi_model else [])
    return start_serve(cmd + args.serve_args)


def browser(width: int, height: int, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        raise SystemExit("docs/screenshot.py: needs chromium and chromedriver (`make browser`)")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in CHROME_FLAGS + [f"--window-size={width},{height}", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def converse(driver, url: str, messages: list[str]) -> None:
    """Type each message, wait for its reply; open the last reply's candidates and the settings."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120, poll_frequency=0.1)
    driver.get(url + "/")
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    box = driver.find_element(By.ID, "input")
    for i, text in enumerate(messages, 1):
        box.send_keys(text, Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.bot[data-done=true]")) >= i
                   or d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        errors = driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        if errors:
            raise SystemExit(f"docs/screenshot.py: the page says {errors[0].text}")
    driver.find_elements(By.CSS_SELECTOR, "details.candidates summary")[-1].click()
    driver.find_element(By.ID, "settings-button").click()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", metavar="DIR", help="dialogue model (default: the default model, as `chitchat serve`)")
    p.add_argument("--mmi-model", metavar="DIR", help="MMI model")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "chat-page.png")
    p.add_argument("--message", action="append", dest="messages", metavar="TEXT",
                   help=f"a message to send, in order (default: {' / '.join(MESSAGES)})")
    p.add_argument("--size", default="900x980", help="window size WxH (default 900x980)")
    p.add_argument("serve_args", nargs="*", help="more `chitchat serve` options, after --")
    args = p.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    if shutil.which("fc-list") and not subprocess.run(["fc-list", ":lang=zh"], capture_output=True,
                                                      text=True).stdout.strip():
        print("docs/screenshot.py: warning: no font with Chinese characters (fc-list :lang=zh); "
              "install fonts-wqy-microhei", file=sys.stderr)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        problem = wait_ready(url, proc, timeout=600, poll=0.3)
        if problem:
            raise SystemExit(f"docs/screenshot.py: {problem}")
        with tempfile.TemporaryDirectory(prefix="chitchat-screenshot-") as profile:
            driver = browser(width, height, profile)
            try:
                converse(driver, url, args.messages or MESSAGES)
                time.sleep(0.3)  # the last paint
                args.output.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.output))
            finally:
                driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"docs/screenshot.py: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
