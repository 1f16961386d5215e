"""Security profiles 1–2 on the charge point side; credentials and TLS towards the CSMS."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

from tests.certs import make_ca_and_cert
from tests.edge.conftest import ProxyFactory, cp_url
from tests.peers import TestCsms, boot16, connect_cp


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth_accepts_right_password_and_passes_it_upstream(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(csms.url, ocpp={"basic_auth": {"passwords": {"CP-A": "s3cret"}}})
    async with connect_cp(cp_url(proxy), "CP-A", additional_headers=basic("CP-A", "s3cret")) as cp:
        await cp.call(boot16())
    assert csms.headers["CP-A"]["Authorization"] == basic("CP-A", "s3cret")["Authorization"]


@pytest.mark.parametrize("headers", [basic("CP-A", "wrong"), basic("CP-B", "s3cret"), {}])
async def test_basic_auth_rejects_wrong_or_missing_credentials(
    make_proxy: ProxyFactory, csms: TestCsms, headers: dict[str, str]
) -> None:
    proxy = await make_proxy(csms.url, ocpp={"basic_auth": {"passwords": {"CP-A": "s3cret"}}})
    with pytest.raises(InvalidStatus) as info:
        async with connect_cp(cp_url(proxy), "CP-A", additional_headers=headers):
            pass
    assert info.value.response.status_code == 401
    assert "CP-A" not in csms.cps


async def test_configured_upstream_credentials_replace_the_charge_points(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(
        csms.url, ocpp={"upstream_username": "{charge_point_id}", "upstream_password": "csms-pw"}
    )
    async with connect_cp(cp_url(proxy), "CP-C", additional_headers=basic("CP-C", "local")) as cp:
        await cp.call(boot16())
    assert csms.headers["CP-C"]["Authorization"] == basic("CP-C", "csms-pw")["Authorization"]


async def test_tls_on_the_charge_point_side(
    make_proxy: ProxyFactory, csms: TestCsms, tmp_path: Path
) -> None:
    certs = make_ca_and_cert(tmp_path / "certs")
    proxy = await make_proxy(
        csms.url, ocpp={"tls": {"certfile": str(certs.cert), "keyfile": str(certs.key)}}
    )
    client_ctx = ssl.create_default_context(cafile=str(certs.ca))
    url = f"wss://127.0.0.1:{proxy.port}/ocpp"
    async with connect_cp(url, "CP-TLS", ssl=client_ctx) as cp:
        await cp.call(boot16())
    assert len(csms.received("CP-TLS")) == 1


async def test_wss_upstream_with_client_certificate(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    server_certs = make_ca_and_cert(tmp_path / "server")
    client_certs = make_ca_and_cert(tmp_path / "client", cn="CP-MTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_certs.cert, server_certs.key)
    ctx.load_verify_locations(client_certs.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    csms = TestCsms()
    csms.server = await serve(
        csms._handler,
        "127.0.0.1",
        csms.port,
        subprotocols=["ocpp1.6"],
        ssl=ctx,
        compression=None,  # type: ignore[list-item]
    )
    try:
        proxy = await make_proxy(
            f"wss://127.0.0.1:{csms.port}/csms/{{charge_point_id}}",
            ocpp={
                "upstream_tls": {
                    "cafile": str(server_certs.ca),
                    "certfile": str(client_certs.cert),
                    "keyfile": str(client_certs.key),
                }
            },
        )
        async with connect_cp(cp_url(proxy), "CP-MTLS") as cp:
            await cp.call(boot16())
        assert len(csms.received("CP-MTLS")) == 1
    finally:
        await csms.stop()
