"""``/docs`` and ``/redoc`` load every asset from the server itself (no CDN)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_assets_are_served_locally(server: Server, page: str) -> None:
    with server.client() as client:
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets, html
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 0, asset
        assert "https://" not in html.replace("https://fastapi.tiangolo.com", "")
