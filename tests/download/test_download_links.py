"""What media links may do: https verified for real, proxies, no private hosts unless allowed,
no https->http downgrade, and a redirect loop as that generation's clear error."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from luma_prefect import LumaClient, LumaConfigurationError, LumaDownloadError, _tls
from luma_prefect._retry import RetryPolicy
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.delivery._download import download_generation_files
from luma_prefect.delivery._transfer import media_client
from luma_prefect.simulator import Fault, FaultKind, RelaySimulator, SimulatorTLS
from luma_prefect.simulator._media import synthetic_bytes
from luma_prefect.storage import storage_for

from .conftest import MIB
from .proxy import ConnectProxy

SIZE = 3 * MIB


def media_requests(sim: RelaySimulator, generation_id: str) -> int:
    return sim.counters().media_requests_by_generation.get(generation_id, 0)


async def test_media_links_on_private_hosts_are_refused_unless_allowed(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    luma_simulator_tls: SimulatorTLS,
) -> None:
    generation = await completed()
    assert sim.base_url.startswith("https://127.0.0.1:")
    strict = sim.credentials().model_copy(update={"allow_private_media_hosts": False})

    async with strict.get_media_client() as http:
        with pytest.raises(LumaDownloadError, match="loopback or link-local") as info:
            await download_generation_files(
                client, generation, storage_for(dest), assets=("video",), http=http
            )

    assert info.value.generation_id == generation.id
    assert "allow_private_media_hosts" in str(info.value)
    assert media_requests(sim, generation.id) == 0  # never contacted
    assert not (dest / generation.id / "video.mp4").exists()


async def test_a_redirect_to_a_private_host_is_refused_before_it_is_requested(
    dest: Path, client: LumaClient
) -> None:
    from luma_prefect import Generation, VideoAsset

    asked: list[str] = []

    def cdn(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(302, headers={"location": "https://10.0.0.7/metadata"})

    generation = Generation(
        id="6f1c2f55-3d61-4b0b-9d0e-8c2f7a3c1e11",
        state="completed",
        video_raw=VideoAsset(url="https://93.184.215.14/v.mp4"),  # a public address literal
    )
    async with media_client(transport=httpx.MockTransport(cdn)) as http:
        with pytest.raises(LumaDownloadError, match=r"10\.0\.0\.7"):
            await download_generation_files(
                client, generation, storage_for(dest), assets=("video",), http=http
            )

    assert asked == ["https://93.184.215.14/v.mp4"]  # the private hop was never sent


async def test_an_https_link_never_follows_a_redirect_to_http(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(Fault(FaultKind.REDIRECT_TO_HTTP, generation_id=generation.id))

    with pytest.raises(LumaDownloadError, match="downgrade") as info:
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), http=http
        )

    assert info.value.generation_id == generation.id
    assert media_requests(sim, generation.id) == 1  # the http:// hop was never requested


async def test_a_redirect_loop_is_that_generations_clear_error(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    http: httpx.AsyncClient,
) -> None:
    generation = await completed()
    sim.add_fault(Fault(FaultKind.REDIRECT_LOOP, generation_id=generation.id))

    with pytest.raises(LumaDownloadError, match="redirect loop") as info:
        await download_generation_files(
            client, generation, storage_for(dest), assets=("video",), http=http
        )

    assert info.value.generation_id == generation.id
    assert 2 <= media_requests(sim, generation.id) <= 12  # given up, not retried in a loop


async def test_an_untrusted_certificate_is_a_clear_error_not_a_retry(
    sim: RelaySimulator, client: LumaClient, completed: Callable[..., Any], dest: Path
) -> None:
    generation = await completed()

    async with media_client(allow_private_hosts=True) as http:  # certifi: not the run's CA
        with pytest.raises(LumaDownloadError, match="TLS verification"):
            await download_generation_files(
                client, generation, storage_for(dest), assets=("video",), http=http
            )

    assert media_requests(sim, generation.id) == 0


async def test_the_relay_client_verifies_the_relay_certificate_too(sim: RelaySimulator) -> None:
    generation_id = sim.create_generation(prompt="fox")
    untrusting = LumaRelayCredentials(
        base_url=sim.base_url, api_key=SecretStr(sim.api_key), route_prefix=sim.route_prefix
    )
    async with untrusting.get_client(retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get_generation(generation_id)
    async with sim.credentials().get_client() as client:
        assert (await client.get_generation(generation_id)).id == generation_id


async def test_one_ssl_context_per_setting_for_every_relay_and_media_client(
    sim: RelaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    _tls._context.cache_clear()
    credentials = sim.credentials()

    for _ in range(5):
        async with credentials.get_client(), credentials.get_media_client():
            pass

    assert len(loads) == 1  # the run's CA bundle, loaded once for ten clients
    assert _tls.ssl_context(credentials.verify) is _tls.ssl_context(credentials.verify)


async def test_media_go_through_an_https_proxy_tunnel_from_the_environment(
    sim: RelaySimulator,
    client: LumaClient,
    completed: Callable[..., Any],
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = await completed()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with sim.credentials().get_media_client() as http:
            done = await download_generation_files(
                client, generation, storage_for(dest), assets=("video",), http=http
            )

    port = sim.base_url.rsplit(":", 1)[1]
    assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{port}"}
    assert done.assets["video"].sha256 == hashlib.sha256(synthetic_bytes(0, SIZE)).hexdigest()


async def test_a_proxy_that_needs_a_missing_package_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        import socksio  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("socksio is installed: the SOCKS proxy would just work")
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1")
    with pytest.raises(LumaConfigurationError, match="httpx\\[socks\\]"):
        media_client()


def test_credentials_from_the_environment_carry_verify_and_the_private_hosts_switch() -> None:
    env = {"LUMA_RELAY_BASE_URL": "https://relay.example", "LUMA_RELAY_API_KEY": "sk-x"}

    plain = LumaRelayCredentials.from_env(env)
    assert plain.verify is True and plain.allow_private_media_hosts is False

    opted = LumaRelayCredentials.from_env(
        {**env, "LUMA_RELAY_VERIFY": "/etc/ca.pem", "LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS": "1"}
    )
    assert opted.verify == "/etc/ca.pem" and opted.allow_private_media_hosts is True
    assert LumaRelayCredentials.from_env({**env, "LUMA_RELAY_VERIFY": "false"}).verify is False
