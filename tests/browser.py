"""A real headless chromium for tests, and a small parser for the pages it returns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium(url: str, *args: str, timeout: float = 120) -> str:
    """Run chromium once on url with a fresh profile; return its stdout. Killed by its process group if it hangs."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it when run as root)")
    with tempfile.TemporaryDirectory(prefix="vidrop-chromium-") as profile:
        process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.communicate()
            pytest.fail(f"chromium did not finish within {timeout} s on {url}")
        finally:
            _kill_group(process.pid)  # helper processes chromium may leave behind in its own session
    if process.returncode != 0:
        pytest.fail(f"chromium exited with {process.returncode}: {stderr[-2000:]}")
    return stdout


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Page(HTMLParser):
    """What a browser built from a page: its elements with their attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._in_title = False
        self.title = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data

    def cards(self) -> list[dict]:
        return [attrs for tag, attrs in self.elements if tag == "li" and "card" in attrs.get("class", "").split()]

    def hrefs(self) -> list[str]:
        return [attrs["href"] for tag, attrs in self.elements if tag == "a" and "href" in attrs]

    def sources(self) -> list[str]:
        return [attrs["src"] for tag, attrs in self.elements if tag == "img" and "src" in attrs]

    def scripts_or_handlers(self) -> list[tuple[str, dict]]:
        """Script elements, and any element with an on… event attribute."""
        return [
            (tag, attrs)
            for tag, attrs in self.elements
            if tag == "script" or any(name.lower().startswith("on") for name in attrs)
        ]
