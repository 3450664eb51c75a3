"""`sa3ckpt tui URL`: a URL opens in the header views; stats (tensor data) say why not."""

from __future__ import annotations

import asyncio

from tests.remote_servers import Nginx
from tests.tui.helpers import settle, static_text
from tui.app import Sa3ckptApp
from tui.badge import StatusBadge
from tui.coverage_view import CoverageView


def test_a_url_opens_in_the_header_views(nginx: Nginx) -> None:
    url = nginx.url("files/dora-rows.safetensors")

    async def scenario() -> None:
        app = Sa3ckptApp(url)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert static_text(app, "#overview-path") == "dora-rows.safetensors"
            body = static_text(app, "#overview-body")
            assert url in body  # the path row
            assert "dora-rows" in body and "tiny-small" in body and "F16" in body
            assert app.screen.query_one("#overview-badge", StatusBadge).status == "pass"
            await pilot.press("s")  # stats read every tensor: refused with the reason
            await settle(pilot)
            assert app.screen.query_one(CoverageView).stats is None
            messages = [str(n.message) for n in app._notifications]
            assert any("needs the tensor data" in m and "download" in m for m in messages)

    asyncio.run(scenario())
