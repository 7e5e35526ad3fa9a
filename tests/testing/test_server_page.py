"""The HTML verification page (RFC 8628 3.3): plain HTTP checks and one real browser."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from typing import NoReturn
from urllib.parse import urlencode

import pytest
from server_wire import get, poll, post, start_flow

from deviceflow.testing import AuthorizationServer

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def heading(page: str) -> str:
    """The text of a page's h1."""
    found = re.search(r"<h1>(.*)</h1>", page)
    assert found is not None, page
    return found.group(1)


def csrf_of(page: str) -> str:
    """The CSRF token hidden in a confirm page."""
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


async def test_entry_page_is_plain_accessible_html(
    authorization_server: AuthorizationServer,
) -> None:
    """The entry form has a labelled input, no scripts, no external assets and a strict CSP."""
    page = await get(authorization_server.verification_uri)
    assert (200, "text/html") == (page.status, page.content_type)
    assert '<html lang="en">' in page.text
    assert '<label for="user_code">' in page.text
    assert '<input id="user_code" name="user_code"' in page.text
    assert "<script" not in page.text
    assert not re.search(r"(src|href)=", page.text)
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "DENY" == page.headers["X-Frame-Options"]


async def test_confirm_page_shows_the_code_and_the_request(
    authorization_server: AuthorizationServer,
) -> None:
    """?user_code= (typed in any case) shows the canonical code, client, scope and two buttons."""
    server = authorization_server
    code = await start_flow(server, scope="openid offline_access")
    typed = code["user_code"].lower().replace("-", "")
    page = await get(f"{server.verification_uri}?user_code={typed}")
    assert 200 == page.status
    assert '<p class="code" id="user-code"' in page.text
    assert f">{code['user_code']}</p>" in page.text
    assert "<dd>bot</dd>" in page.text
    assert "<dd>openid offline_access</dd>" in page.text
    assert 'value="approve">Approve</button>' in page.text
    assert 'value="deny">Deny</button>' in page.text


async def test_everything_on_the_page_is_escaped(
    authorization_server: AuthorizationServer,
) -> None:
    """A hostile client_id or typed code is shown as text, never as markup."""
    server = authorization_server
    code = await start_flow(server, client_id="<script>alert(1)</script>")
    confirm = await get(f"{server.verification_uri}?user_code={code['user_code']}")
    typed = '"><img src=x onerror=alert(1)>'
    missing = await get(f"{server.verification_uri}?{urlencode({'user_code': typed})}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in confirm.text
    assert "<script>" not in confirm.text
    assert 404 == missing.status
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in missing.text
    assert "<img" not in missing.text


async def test_approve_and_deny_through_the_form(
    authorization_server: AuthorizationServer,
) -> None:
    """Posting the confirm form approves or denies the code."""
    server = authorization_server
    approved, denied = await start_flow(server), await start_flow(server)
    cases = [(approved, "approve", "Device approved"), (denied, "deny", "Request denied")]
    for code, action, title in cases:
        page = await get(f"{server.verification_uri}?user_code={code['user_code']}")
        result = await post(
            server.verification_uri,
            {"user_code": code["user_code"], "csrf": csrf_of(page.text), "action": action},
        )
        assert (200, title) == (result.status, heading(result.text))
    assert 200 == (await poll(server, approved["device_code"])).status
    assert "access_denied" == (await poll(server, denied["device_code"])).error


async def test_form_without_a_valid_csrf_token_is_refused(
    authorization_server: AuthorizationServer,
) -> None:
    """A post not made from this server's confirm page (wrong csrf, no action) decides nothing."""
    server = authorization_server
    code = await start_flow(server)
    page = await get(f"{server.verification_uri}?user_code={code['user_code']}")
    forged = await post(
        server.verification_uri,
        {"user_code": code["user_code"], "csrf": "0" * 64, "action": "approve"},
    )
    no_action = await post(
        server.verification_uri, {"user_code": code["user_code"], "csrf": csrf_of(page.text)}
    )
    assert (400, 400) == (forged.status, no_action.status)
    assert [code["user_code"]] == server.pending_codes()


async def test_decided_or_unknown_codes_are_not_offered(
    authorization_server: AuthorizationServer,
) -> None:
    """A code already decided cannot be decided again; unknown codes show the form again."""
    server = authorization_server
    code = await start_flow(server)
    page = await get(f"{server.verification_uri}?user_code={code['user_code']}")
    server.deny(code["user_code"])
    again = await post(
        server.verification_uri,
        {"user_code": code["user_code"], "csrf": csrf_of(page.text), "action": "approve"},
    )
    shown = await get(f"{server.verification_uri}?user_code={code['user_code']}")
    assert 409 == again.status
    assert 404 == shown.status
    assert 'role="alert"' in shown.text
    assert 'aria-invalid="true"' in shown.text


def unavailable(reason: str) -> NoReturn:
    """Skip the browser test, except under CI where it must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test")
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's chromium, or skip (fail under CI) when there is none."""
    if importlib.util.find_spec("playwright") is None:
        unavailable("the playwright package is not installed")
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    unavailable("no chromium binary (install the Debian package 'chromium')")


@pytest.mark.browser
async def test_a_person_approves_in_a_real_browser(
    authorization_server: AuthorizationServer,
) -> None:
    """In headless Chromium, typing the code, confirming and clicking Approve approves it."""
    executable = chromium_path()
    from playwright.async_api import async_playwright, expect

    server = authorization_server
    code = await start_flow(server, scope="openid")
    other = await start_flow(server)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(server.verification_uri)
            field = page.get_by_label("Enter the code shown on your device")
            await field.fill(code["user_code"].lower().replace("-", " "))
            await page.get_by_role("button", name="Continue").click()
            await expect(page.locator("#user-code")).to_have_text(code["user_code"])
            await page.get_by_role("button", name="Approve").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Device approved")
            await page.goto(other["verification_uri_complete"])
            await page.get_by_role("button", name="Deny").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Request denied")
        finally:
            await browser.close()
    assert [] == server.pending_codes()
    assert 200 == (await poll(server, code["device_code"])).status
    assert "access_denied" == (await poll(server, other["device_code"])).error
