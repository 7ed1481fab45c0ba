"""Session fixtures for the loopback test world (see tests/world): each piece starts once,
skips only when its program is not installed, and is stopped by PID at the end; the session
fails if any process the world started is still alive after teardown."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import world
from tests.daemon_proc import Daemon, write_config
from tests.world import names, procs
from tests.world.ca import LocalCA
from tests.world.mail import MailServers
from tests.world.nginx import WkdServer
from tests.world.nicknym import NicknymServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

_PACKAGES = {
    "tor": "tor",
    "nginx": "nginx",
    "sks": "sks",
    "mail": "postfix dovecot-imapd dovecot-lmtpd gpg-wks-server",
}
# The test provider's mailboxes: each mail scenario uses its own, so listings compare cleanly.
MAIL_USERS = {
    f"{name}@{domain}": f"pw-{name}"
    for name, domain in (
        ("alice", "example.org"),
        ("carol", "example.org"),
        ("dave", "example.org"),
        ("erin", "example.org"),
        ("frank", "example.org"),
        ("bob", "example.net"),
        ("gina", "example.net"),
    )
}


def _require(piece: str) -> None:
    missing = world.missing_binaries(piece)
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH (apt-get install {_PACKAGES[piece]})")


@pytest.fixture(scope="session")
def world_dir() -> Iterator[Path]:
    """The world's files, outside pytest's basetemp (concurrent sessions rotate those away)."""
    path = Path(tempfile.mkdtemp(prefix="refreshd-world-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def test_ca(world_dir: Path) -> LocalCA:
    return LocalCA(world_dir / "ca")


@pytest.fixture(scope="session")
def nicknym_server(test_ca: LocalCA) -> Iterator[NicknymServer]:
    address = world.world_address()
    with NicknymServer(
        test_ca, names.NICKNYM_HOST, names.NICKNYM_DOMAIN, address, signing=True
    ) as server:
        yield server


@pytest.fixture(scope="session")
def wkd_server(
    test_ca: LocalCA, nicknym_server: NicknymServer, world_dir: Path
) -> Iterator[WkdServer]:
    _require("nginx")
    server = world.start_wkd_server(test_ca, nicknym_server, world_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sks_server(world_dir: Path) -> Iterator[SksServer]:
    _require("sks")
    with SksServer(world.world_address()) as server:
        yield server


@pytest.fixture(scope="session")
def mail_servers(test_ca: LocalCA, wkd_server: WkdServer) -> Iterator[MailServers]:
    """Postfix, Dovecot, gpg-wks-server and the KST on the world address (tests/world/mail.py)."""
    _require("mail")
    with MailServers(test_ca, world.world_address(), MAIL_USERS, wkd=wkd_server) as servers:
        yield servers


@pytest.fixture(scope="session")
def tor_network(world_dir: Path) -> Iterator[TorNetwork]:
    _require("tor")
    with world.new_tor_network(world_dir) as network:
        yield network


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs after fixture teardown: a world process still alive is a failure (and is killed)."""
    leftover = procs.reap_leftovers()
    if leftover:
        session.config.get_terminal_writer().line(f"world processes left running: {leftover}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Key manager + GnuPG bridge rigs on temporary state, closed at the end (gnupg tests)."""
    from tests.test_gnupg_import import make_rig

    made: list[Any] = []

    def make(*, sync: bool = False, homedir: str = "") -> Any:
        made.append(make_rig(tmp_path / f"state{len(made)}", sync=sync, homedir=homedir))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for AF_UNIX paths (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def config_sections() -> dict[str, list[str]]:
    """Every section of the config and its keys, in the order the dataclasses declare them."""
    from refreshd.config import Config

    cfg = Config()
    return {
        f.name: [key.name for key in dataclasses.fields(getattr(cfg, f.name))]
        for f in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, f.name))
    }


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A refreshd process with the default configuration in tmp_path, stopped afterwards
    (modules that need another daemon define their own `daemon`)."""
    d = Daemon(write_config(tmp_path, {}))
    yield d
    d.stop()
