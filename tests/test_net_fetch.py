"""The fetcher against hostile and ordinary loopback servers (direct mode via connect_to, and
through a SOCKS5 proxy of our own standing in for Tor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from refreshd import config
from refreshd.errors import FetchFailed, SourceError
from refreshd.net import vks
from refreshd.net.fetch import (
    Fetcher,
    Redirects,
    Request,
    Validators,
    redirect_target,
    registrable_domain,
)
from refreshd.net.tor import TorState, TorSupervisor
from tests.net_servers import (
    FakeControlPort,
    HttpServer,
    Socks5Server,
    Tls,
    conditional,
    endless,
    make_tls,
    redirect,
    static,
    tor_ready,
    trickle,
)

NAMES = ("example.org", "openpgpkey.example.org", "keys.example.net")
KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(str(tmp_path), *NAMES)


def direct_config(tmp_path: Path, tls: Tls, port: int, **network: Any) -> config.Config:
    """Tor off, every test name mapped to the loopback server (never the system resolver)."""
    return config.from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": tls.ca_file,
                "connect_to": [f"{name}:443:127.0.0.1:{port}" for name in NAMES],
                "timeout": 5,
                "max_response_bytes": 4096,
                "max_key_bytes": 1024,
                **network,
            },
        }
    )


async def serve(nursery: trio.Nursery, tls: Tls, handlers: dict[str, Any]) -> HttpServer:
    return await HttpServer(handlers, tls.server).start(nursery)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


async def fetch_failure(fetcher: Fetcher, req: Request) -> str:
    with pytest.raises(FetchFailed) as info:
        await fetcher.fetch(req, sink=Sink())
    return info.value.reason


async def test_key_streams_to_the_sink(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    server = await serve(nursery, tls, {"/k": static(200, KEY)})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    sink = Sink()
    answer = await fetcher.fetch(Request("https://example.org/k"), sink=sink)
    assert (answer.status, answer.body, sink.body) == (200, b"", KEY)
    assert answer.body_bytes == len(KEY) and answer.wire_bytes > len(KEY)
    assert answer.validators.body_sha256 and not answer.unchanged
    # connect_to keeps the name for TLS and Host while connecting to 127.0.0.1
    assert server.requests[0].header("Host") == "example.org"


@pytest.mark.parametrize(
    ("handlers", "url", "reason"),
    [
        ({"/": static(200, b"x" * 5000)}, "https://example.org/big", "response larger than 4096"),
        ({"/": endless}, "https://example.org/endless", "response larger than 4096"),
        (
            {"/": redirect("https://evil.example.net/k")},
            "https://example.org/k",
            "redirect to another domain refused (evil.example.net)",
        ),
        (
            {"/": redirect("http://openpgpkey.example.org/k")},
            "https://example.org/k",
            "redirect to http URL refused",
        ),
        ({"/": redirect("/again")}, "https://example.org/loop", "more than 3 redirects"),
        ({"/": redirect("")}, "https://example.org/k", "redirect without a Location"),
        (
            {"/": static(200, KEY, ("Content-Encoding", "gzip"))},
            "https://example.org/k",
            "content encoding 'gzip'",
        ),
        (
            {"/": static(200, b"<html>", ("Content-Length", "x"))},
            "https://example.org/k",
            "the server broke the HTTP protocol",
        ),
    ],
)
async def test_hostile_servers_end_in_a_reason(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls, handlers: dict[str, Any], url: str, reason: str
) -> None:
    server = await serve(nursery, tls, handlers)
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    req = Request(url, redirects=Redirects.SAME_DOMAIN_HTTPS)
    assert reason in await fetch_failure(fetcher, req)


async def test_trickling_server_is_cut_off(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    server = await serve(nursery, tls, {"/": trickle(KEY)})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port, timeout=1), None)
    sink = Sink()
    with pytest.raises(FetchFailed, match=r"^timed out after 1 s$"):
        await fetcher.fetch(Request("https://example.org/slow"), sink=sink)
    assert len(sink.body) < len(KEY)


async def test_redirect_refused_without_policy(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/": redirect("https://example.org/other")})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    assert "this source allows none" in await fetch_failure(
        fetcher, Request("https://example.org/k")
    )
    assert len(server.requests) == 1


async def test_same_domain_redirect_is_followed(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    handlers = {
        "/start": redirect("https://openpgpkey.example.org/hop"),
        "/hop": redirect("/key", 307),
        "/key": static(200, KEY),
    }
    server = await serve(nursery, tls, handlers)
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    sink = Sink()
    answer = await fetcher.fetch(
        Request("https://example.org/start", redirects=Redirects.SAME_DOMAIN_HTTPS), sink=sink
    )
    assert answer.url == "https://openpgpkey.example.org/key" and sink.body == KEY
    assert [r.header("Host") for r in server.requests] == [
        "example.org",
        "openpgpkey.example.org",
        "openpgpkey.example.org",
    ]
    assert all(r.header("Referer") is None and r.header("Cookie") is None for r in server.requests)


async def test_cookies_are_never_sent_back(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    handlers = {
        "/start": static(302, b"", ("Location", "/key"), ("Set-Cookie", "id=tracker; Path=/")),
        "/key": static(200, KEY, ("Set-Cookie", "id=tracker2")),
    }
    server = await serve(nursery, tls, handlers)
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    req = Request("https://example.org/start", redirects=Redirects.SAME_DOMAIN_HTTPS)
    await fetcher.fetch(req, sink=Sink())
    await fetcher.fetch(req, sink=Sink())
    assert len(server.requests) == 4
    assert all(r.header("Cookie") is None for r in server.requests)


async def test_certificate_from_another_ca_is_refused(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    stranger = make_tls(str(tmp_path), *NAMES)
    server = await HttpServer({"/": static(200, KEY)}, stranger.server).start(nursery)
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    reason = await fetch_failure(fetcher, Request("https://example.org/k"))
    assert reason.startswith("TLS certificate not trusted")


async def test_certificate_for_another_name_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tls = make_tls(str(tmp_path), "keys.example.net")
    server = await serve(nursery, tls, {"/": static(200, KEY)})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    reason = await fetch_failure(fetcher, Request("https://example.org/k"))
    assert reason.startswith("TLS certificate not trusted")


async def test_garbage_json_body_is_rejected_by_the_reader(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/vks/v1/upload": static(200, b"\x00\xff<html>garbage")})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    answer = await fetcher.fetch(vks.upload("https://keys.example.net", KEY.decode()))
    assert server.requests[0].header("Content-Type") == "application/json"
    with pytest.raises(SourceError, match="not valid JSON"):
        vks.read_upload(answer.status, answer.body)


async def test_error_answers_keep_a_short_body_and_skip_the_sink(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/": static(404, b"n" * 20000)})
    cfg = direct_config(tmp_path, tls, server.port, max_response_bytes=1 << 20)
    sink = Sink()
    answer = await Fetcher(cfg, None).fetch(Request("https://example.org/none"), sink=sink)
    assert answer.status == 404 and len(answer.body) == 16384 and sink.chunks == []
    assert not answer.unchanged


async def test_header_sets_are_identical_apart_from_the_url(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/": static(200, KEY)})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    await fetcher.fetch(Request("https://example.org/.well-known/openpgpkey/hu/aaaa"), sink=Sink())
    await fetcher.fetch(Request("https://example.org/.well-known/openpgpkey/hu/bbbb"), sink=Sink())
    first, second = (r.head.split(b"\r\n") for r in server.requests)
    assert first[0] != second[0]  # the request lines differ by the URL
    assert first[1:] == second[1:]  # every header byte is the same
    fields = dict(line.decode().split(": ", 1) for line in first[1:] if line)
    # SPEC 5: no cookies, no Referer, a fixed generic User-Agent, nothing naming the daemon
    assert sorted(name.lower() for name in fields) == [
        "accept",
        "accept-encoding",
        "connection",
        "host",
        "user-agent",
    ]
    assert fields["User-Agent"].startswith("Mozilla/5.0 ")
    assert "refreshd" not in first[0].decode().lower() + str(fields).lower()


async def test_conditional_request_gives_unchanged_without_body(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    etag, modified = '"66a1-3f2"', "Mon, 01 Jul 2024 10:00:00 GMT"
    server = await serve(nursery, tls, {"/": conditional(KEY, etag, modified)})
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    first = await fetcher.fetch(Request("https://example.org/k"), sink=Sink())
    assert first.validators.etag == etag and first.validators.last_modified == modified
    assert server.requests[0].header("If-None-Match") is None
    sink = Sink()
    second = await fetcher.fetch(
        Request("https://example.org/k", validators=first.validators), sink=sink
    )
    assert server.requests[1].header("If-None-Match") == etag
    assert server.requests[1].header("If-Modified-Since") == modified
    assert (second.status, second.unchanged, sink.chunks, second.body_bytes) == (304, True, [], 0)
    assert second.validators == first.validators


async def test_unchanged_body_detected_by_hash(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(
        nursery, tls, {"/same": static(200, KEY), "/other": static(200, KEY + b"x")}
    )
    fetcher = Fetcher(direct_config(tmp_path, tls, server.port), None)
    first = await fetcher.fetch(Request("https://example.org/same"), sink=Sink())
    assert first.validators == Validators(body_sha256=first.validators.body_sha256)
    again = await fetcher.fetch(
        Request("https://example.org/same", validators=first.validators), sink=Sink()
    )
    assert again.status == 200 and again.unchanged
    changed = await fetcher.fetch(
        Request("https://example.org/other", validators=first.validators), sink=Sink()
    )
    assert not changed.unchanged


async def test_key_request_needs_a_sink(tmp_path: Path, tls: Tls) -> None:
    fetcher = Fetcher(direct_config(tmp_path, tls, 1), None)
    with pytest.raises(ValueError, match="needs a sink"):
        await fetcher.fetch(Request("https://example.org/k"))


def tor_config(tmp_path: Path, tls: Tls, control: str, socks: str) -> config.Config:
    return config.from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s")},
            "tor": {"mode": "system", "control": control, "socks": socks},
            "network": {"ca_file": tls.ca_file, "timeout": 5},
        }
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_tor_unavailable_opens_no_connection(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/": static(200, KEY)})
    events: list[dict[str, Any]] = []
    cfg = tor_config(tmp_path, tls, f"127.0.0.1:{free_port()}", f"127.0.0.1:{server.port}")
    tor = TorSupervisor(cfg, lambda event, **f: events.append({"event": event, **f}))
    await nursery.start(tor.run)
    assert not await tor_ready(tor, 2)
    assert tor.state is TorState.UNAVAILABLE and "unreachable" in tor.detail
    for _ in range(2):
        assert await fetch_failure(Fetcher(cfg, tor), Request("https://example.org/k")) == (
            "Tor unavailable"
        )
    assert await fetch_failure(Fetcher(cfg, None), Request("https://example.org/k")) == (
        "Tor unavailable"
    )
    # The SOCKS port given is the key server itself: not one connection reached it.
    assert server.accepts == 0


async def test_fetches_through_socks_use_fresh_credentials_and_remote_names(
    nursery: trio.Nursery, tmp_path: Path, tls: Tls
) -> None:
    server = await serve(nursery, tls, {"/": static(200, KEY)})
    socks = await Socks5Server({443: server.port}).start(nursery)
    control = await FakeControlPort().start(nursery)
    cfg = tor_config(tmp_path, tls, f"127.0.0.1:{control.port}", f"127.0.0.1:{socks.port}")
    tor = TorSupervisor(cfg, lambda event, **f: None)
    await nursery.start(tor.run)
    assert await tor_ready(tor, 10)
    fetcher = Fetcher(cfg, tor)
    answers = []
    for url in ("https://openpgpkey.example.org/a", "https://keys.example.net/b"):
        sink = Sink()
        answers.append(await fetcher.fetch(Request(url), sink=sink))
        assert sink.body == KEY
    assert [(g.atyp, g.host, g.port) for g in socks.grants] == [
        (3, "openpgpkey.example.org", 443),
        (3, "keys.example.net", 443),
    ]
    usernames = [g.username for g in socks.grants]
    assert usernames == [a.circuit_credentials for a in answers]
    assert len(set(usernames)) == 2 and len({g.password for g in socks.grants}) == 2
    assert server.accepts == 2  # one connection per fetch: no keep-alive reuse


async def test_socks_port_on_a_unix_socket(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    server = await serve(nursery, tls, {"/": static(200, KEY)})
    socks = await Socks5Server({443: server.port}).start(nursery, str(tmp_path / "socks"))
    control = await FakeControlPort().start(nursery)
    cfg = tor_config(tmp_path, tls, f"127.0.0.1:{control.port}", f"unix:{tmp_path / 'socks'}")
    tor = TorSupervisor(cfg, lambda event, **f: None)
    await nursery.start(tor.run)
    assert await tor_ready(tor, 10)
    sink = Sink()
    answer = await Fetcher(cfg, tor).fetch(Request("https://example.org/k"), sink=sink)
    assert sink.body == KEY and answer.status == 200
    assert [(g.username, g.atyp, g.host) for g in socks.grants] == [
        (answer.circuit_credentials, 3, "example.org")
    ]


async def test_closed_socks_port_is_named(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    control = await FakeControlPort().start(nursery)
    cfg = tor_config(tmp_path, tls, f"127.0.0.1:{control.port}", f"127.0.0.1:{free_port()}")
    tor = TorSupervisor(cfg, lambda event, **f: None)
    await nursery.start(tor.run)
    assert await tor_ready(tor, 10)
    reason = await fetch_failure(Fetcher(cfg, tor), Request("https://example.org/k"))
    assert reason.startswith("could not connect to Tor's SOCKS port")


async def test_invalid_url_is_a_reason(tmp_path: Path, tls: Tls) -> None:
    fetcher = Fetcher(direct_config(tmp_path, tls, 1), None)
    assert "invalid URL" in await fetch_failure(fetcher, Request("https://exa mple.org:x/k"))
    assert "not an http(s) URL" in await fetch_failure(fetcher, Request("ftp://example.org/k"))


async def test_socks_refusal_is_a_reason(nursery: trio.Nursery, tmp_path: Path, tls: Tls) -> None:
    socks = await Socks5Server({}).start(nursery)
    control = await FakeControlPort().start(nursery)
    cfg = tor_config(tmp_path, tls, f"127.0.0.1:{control.port}", f"127.0.0.1:{socks.port}")
    tor = TorSupervisor(cfg, lambda event, **f: None)
    await nursery.start(tor.run)
    assert await tor_ready(tor, 10)
    reason = await fetch_failure(Fetcher(cfg, tor), Request("https://example.org/k"))
    assert reason.startswith("Tor could not open the connection")


@pytest.mark.parametrize(
    ("first", "location", "hops", "outcome"),
    [
        (
            "https://example.org/a",
            "https://openpgpkey.example.org/b",
            0,
            "https://openpgpkey.example.org/b",
        ),
        ("https://openpgpkey.example.org/a", "https://example.org/b", 0, "https://example.org/b"),
        ("https://example.org/a", "/b?x=1", 2, "https://example.org/b?x=1"),
        ("https://example.org/a", "https://example.org.evil.net/b", 0, "another domain"),
        ("https://a.example.co.uk/a", "https://b.other.co.uk/b", 0, "another domain"),
        ("https://example.org/a", "ftp://example.org/b", 0, "ftp URL refused"),
        ("https://example.org/a", "https://example.org/b", 3, "more than 3"),
        ("https://example.org/a", "https://[::1/b", 0, "invalid URL"),
    ],
)
def test_redirect_policy(first: str, location: str, hops: int, outcome: str) -> None:
    if outcome.startswith("https://"):
        assert redirect_target(Redirects.SAME_DOMAIN_HTTPS, first, first, location, hops) == outcome
    else:
        with pytest.raises(FetchFailed, match=outcome.replace("?", r"\?")):
            redirect_target(Redirects.SAME_DOMAIN_HTTPS, first, first, location, hops)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("openpgpkey.example.org", "example.org"),
        ("Example.ORG.", "example.org"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_registrable_domain(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


def test_registrable_domain_rules() -> None:
    rules = frozenset({"uk", "co.uk", "*.ck", "!www.ck"})
    assert registrable_domain("x.y.co.uk", rules) == "y.co.uk"
    assert registrable_domain("a.b.c.ck", rules) == "b.c.ck"
    assert registrable_domain("x.www.ck", rules) == "www.ck"
    assert registrable_domain("mail.example.org", frozenset()) == "example.org"
