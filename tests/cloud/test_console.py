"""The operator console is served by the running collector and works over the same API."""

from __future__ import annotations

from tests.cloud.conftest import Running


async def test_console_page_is_served_and_root_redirects_to_it(running: Running) -> None:
    page = await running.api.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<title>chargesight" in html
    # the page drives the documented API, with the operator's bearer token
    assert 'const API = "/api/v1"' in html
    assert '"Authorization": "Bearer " + token' in html
    for path in ("/issues?", "/ask", "/resolve", "/requests", "rerun_playbook"):
        assert path in html or path.strip("/") in html
    root = await running.api.get("/", follow_redirects=False)
    assert root.status_code in (302, 307)
    assert root.headers["location"] == "/console"
    # the console adds no unauthenticated data path: the API still wants a token
    assert (await running.api.get("/api/v1/issues")).status_code == 401
