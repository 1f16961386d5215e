"""``chargesight ask "QUESTION" [--api URL] [--token T]``: ask the collector from a terminal."""

from __future__ import annotations

import os
import sys

import httpx


def main(question: str, api_url: str, token: str | None) -> int:
    token = token or os.environ.get("CHARGESIGHT_TOKEN")
    if not token:
        print("chargesight: no API token: pass --token or set CHARGESIGHT_TOKEN", file=sys.stderr)
        return 2
    url = api_url.rstrip("/") + "/api/v1/ask"
    try:
        resp = httpx.post(url, json={"question": question}, headers={"Authorization": f"Bearer {token}"},
                          timeout=30.0)  # fmt: skip
    except httpx.HTTPError as exc:
        print(f"chargesight: cannot reach {api_url}: {exc}", file=sys.stderr)
        return 1
    try:
        body = resp.json()
    except ValueError:
        print(f"chargesight: {url} answered {resp.status_code} without JSON", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        print(
            f"chargesight: {err.get('code', resp.status_code)}: {err.get('message', resp.text)}",
            file=sys.stderr,
        )
        return 2 if resp.status_code in (401, 403) else 1
    print(body.get("answer", ""))
    issues = body.get("issues") or []
    if issues:
        print("\nissues used:")
        for i in issues:
            print(f"  {i.get('id')}  {i.get('summary', '')}")
    return 0
