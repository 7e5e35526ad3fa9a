"""The CLI's browser helpers never open a link that is not https (or loopback http)."""

from __future__ import annotations

import asyncio
import webbrowser

import pytest
from hostile_flows import UNSAFE_LINKS

from deviceflow._cli._terminal import can_open_browser, open_link, open_link_in_background
from helpers import time_factor


class FakeBrowser:
    """Stands in for webbrowser.open and records what it was asked to open."""

    def __init__(self, *, fails: bool = False) -> None:
        self.opened: list[str] = []
        self.fails = fails

    def __call__(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        if self.fails:
            raise webbrowser.Error("no runnable browser")
        self.opened.append(url)
        return True


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> FakeBrowser:
    fake = FakeBrowser()
    monkeypatch.setattr(webbrowser, "open", fake)
    return fake


@pytest.mark.parametrize("link", UNSAFE_LINKS)
def test_open_link_refuses_unsafe_links(link: str, browser: FakeBrowser) -> None:
    """javascript:, data:, file:, plain http to other hosts ... are never handed to a browser."""
    assert open_link(link) is False
    assert [] == browser.opened


@pytest.mark.parametrize(
    "link",
    ["https://idp.example/device?user_code=WDJB-MJHT", "http://127.0.0.1:8080/v", "http://[::1]/v"],
)
def test_open_link_opens_safe_links(link: str, browser: FakeBrowser) -> None:
    """https links, and http ones to loopback, are opened as they are."""
    assert open_link(link) is True
    assert [link] == browser.opened


def test_open_link_survives_a_missing_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """No runnable browser: open_link answers False instead of raising."""
    monkeypatch.setattr(webbrowser, "open", FakeBrowser(fails=True))
    assert open_link("https://idp.example/device") is False


@pytest.mark.parametrize("link", ["javascript:alert(1)", "http://evil.example/", "file:///x"])
async def test_open_link_in_background_refuses_unsafe_links(
    link: str, browser: FakeBrowser
) -> None:
    """The background opener reports False for an unsafe link and opens nothing."""
    opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    open_link_in_background(link, opened)
    assert await asyncio.wait_for(opened, 5 * time_factor()) is False
    assert [] == browser.opened


def test_no_browser_without_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux without DISPLAY or WAYLAND_DISPLAY (a server, SSH), no browser is tried."""
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert can_open_browser() is False
