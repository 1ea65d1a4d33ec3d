"""The web console (``durable console``), driven by Playwright in Debian's headless Chromium
against a real engine whose control plane requires API keys: the list and its filters, an
invocation's timeline, actions through the buttons with the status changing live, a
refused action's error, resolving an awakeable, object state. Screenshots go to the test's
tmp dir (and to ``DURABLE_SCREENSHOTS``, when set: how examples/img/ is made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from durable.testing import start_engine
from durable.v1 import types_pb2
from durable_server.console import Console
from durable_server.control.auth import KeyFile, token_digest
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from examples.approval_workflow import expenses
from examples.ticket_cart import cart, ticket
from tests.telemetry_handlers import tele

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DURABLE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OPERATOR, READER = "dk_console_operator", "dk_console_reader"


def _keys(path: Path) -> Path:
    lines = []
    for name, roles, token in (
        ("ops", '"invoke", "read", "operate"', OPERATOR),
        ("viewer", '"read"', READER),
    ):
        lines += ["[[key]]", f'name = "{name}"', f"roles = [{roles}]"]
        lines.append(f'sha256 = "{token_digest(token)}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: .ci/run installs Debian's chromium package")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Shots:
    """Screenshots into the tmp dir, and into DURABLE_SCREENSHOTS when set."""

    def __init__(self, tmp: Path) -> None:
        self.dirs = [tmp / "screenshots"]
        if os.environ.get("DURABLE_SCREENSHOTS"):
            self.dirs.append(Path(os.environ["DURABLE_SCREENSHOTS"]))
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Any, name: str) -> None:
        for d in self.dirs:
            await page.screenshot(path=str(d / f"{name}.png"), full_page=True)


async def test_the_console_lists_shows_and_steers(
    nats_server: EmbeddedNats, tmp_path: Path, browser: Any
) -> None:
    shots = Shots(tmp_path)
    keys = _keys(tmp_path / "keys.toml")
    async with (
        start_engine([tele, cart, ticket, expenses], nats_url=nats_server.url) as engine,
        ControlServer(engine.config, "127.0.0.1:0", authenticators=[KeyFile(keys)]) as server,
        Console(server.target, "127.0.0.1:0", token=OPERATOR) as console,
    ):
        client = engine.client  # the engine's own (unauthenticated) control plane: for setup
        for i in range(6):
            await client.execute("tele/ok", i, timeout=30)
        doomed = [(await client.start("tele/doomed", i)).id for i in range(3)]
        for inv in doomed:
            with pytest.raises(Exception, match="doomed fails"):
                await client.result(inv, timeout=30)
        await client.execute("cart/add_ticket", {"ticket_id": "seat-12A"}, key="ada", timeout=30)
        approval = await client.start(
            "expenses/submit", {"employee": "ada", "amount": 120.5, "reason": "train tickets"}
        )
        sleeper = (await client.start("tele/sleeper", 600.0)).id
        for inv in (approval.id, sleeper):
            await _until_status(client, inv, types_pb2.INVOCATION_STATUS_SUSPENDED)

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(console.address)
        # The list, and the counts by status and service with the backlog.
        await page.wait_for_selector("#invocations tbody tr")
        await page.wait_for_selector("#services tbody tr")
        failed_chip = page.locator('#status-counts [data-status="FAILED"] b')
        assert await failed_chip.inner_text() == "3"
        await shots.take(page, "console-list")

        # Filter to FAILED: exactly the three doomed ones.
        await page.select_option("#filters select[name=status]", "FAILED")
        await page.click("#filters button[type=submit]")
        await _until(lambda: page.locator("#invocations tbody tr").count(), 3)
        statuses = await page.locator("#invocations tbody [data-status]").all_inner_texts()
        assert statuses == ["FAILED"] * 3
        ids = await page.locator("#invocations tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
        assert sorted(ids) == sorted(doomed)

        # One invocation: its steps, and its failure.
        await page.click(f'#invocations tr[data-id="{doomed[0]}"]')
        await page.wait_for_selector('#timeline tr.step[data-name="one"]')
        assert "doomed fails" in await page.inner_text("#invocation")
        await shots.take(page, "console-failed")

        # The approval workflow waits on an awakeable: resolve it through the form; the
        # status changes live (WatchWorkflow), with no reload.
        page.on("dialog", lambda dialog: dialog.accept())
        await page.goto(f"{console.address}#/invocation/{approval.id}")
        await page.wait_for_selector('#waits [data-wait="awakeable"]')
        await shots.take(page, "approval-waiting")
        await page.click('form[data-resolve="ResolveAwakeable"] button')
        await page.wait_for_selector('#invocation h2 [data-status="COMPLETED"]', timeout=20000)
        await page.wait_for_selector('#timeline tr.step[data-name="pay out"]')
        await shots.take(page, "approval-workflow")
        assert (await approval.result(timeout=10))["approved"] is True

        # Pause and resume a sleeping invocation through the buttons.
        await page.goto(f"{console.address}#/invocation/{sleeper}")
        await page.wait_for_selector('#invocation h2 [data-status="SUSPENDED"]')
        await page.click('button[data-action="Pause"]')
        await page.wait_for_selector('#invocation h2 [data-status="PAUSED"]')
        assert (await client.get(sleeper)).status == types_pb2.INVOCATION_STATUS_PAUSED
        await page.click('button[data-action="Resume"]')
        await page.locator('#invocation h2 [data-status="PAUSED"]').wait_for(state="detached")
        assert (await client.get(sleeper)).status != types_pb2.INVOCATION_STATUS_PAUSED

        # A reader's key: Cancel is refused, and the page says why; nothing changed.
        await page.fill("#token", READER)
        await page.click("#token-form button")
        await page.wait_for_selector('button[data-action="Cancel"]')
        await page.click('button[data-action="Cancel"]')
        await page.wait_for_selector("#error:not([hidden])")
        error = await page.inner_text("#error")
        assert "PERMISSION_DENIED" in error, error
        await shots.take(page, "console-refused")
        assert (await client.get(sleeper)).status not in (
            types_pb2.INVOCATION_STATUS_CANCELLED,
            types_pb2.INVOCATION_STATUS_PAUSED,
        )

        # The ticket cart's state for its key (read by the reader).
        await page.goto(f"{console.address}#/state/cart/ada")
        await page.wait_for_selector("#state [data-entry]")
        assert "seat-12A" in await page.inner_text("#state")
        await shots.take(page, "ticket-cart-state")
        await page.goto(f"{console.address}#/?service=cart&handler=cart/add_ticket")
        await page.wait_for_selector("#invocations tbody tr")
        [cart_row] = await page.locator("#invocations tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
        await page.goto(f"{console.address}#/invocation/{cart_row}")
        await page.wait_for_selector("#timeline tr.step")
        await shots.take(page, "ticket-cart")
        await client.kill(sleeper)


async def _until(read: Any, wanted: Any, within: float = 20.0) -> None:
    """Poll ``await read()`` until it returns ``wanted`` (the page's CSP forbids the
    evaluated strings of Playwright's wait_for_function)."""
    deadline = time.monotonic() + within
    while (got := await read()) != wanted:
        assert time.monotonic() < deadline, f"{got!r}, not {wanted!r}, after {within}s"
        await asyncio.sleep(0.05)


async def _until_status(client: Any, invocation_id: str, status: int) -> None:
    deadline = time.monotonic() + 20
    while (await client.get(invocation_id)).status != status:
        assert time.monotonic() < deadline, await client.get(invocation_id)
        await asyncio.sleep(0.05)
