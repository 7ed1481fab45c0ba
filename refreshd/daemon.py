"""The daemon: one nursery that owns every task (SPEC section 1).

Start order: state directory, audit log, store, socket and, when `serve.keyserver` is set, the
keyserver door (so clients get answers at once, even before Tor is usable), then Tor
supervision, discovery, the refresh loop, the own-key task and the scheduler's periodic jobs.
SIGTERM or SIGINT cancels the nursery; the socket file is removed on the way out and systemd
is told STOPPING.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import structlog
import trio

from refreshd import __version__, sdnotify
from refreshd.audit import AuditLog
from refreshd.clock import utcnow
from refreshd.config import Config, TorMode
from refreshd.discovery import Discovery
from refreshd.door import KeyserverDoor
from refreshd.feeds import Feeds
from refreshd.gnupg import GnupgBridge
from refreshd.keymanager import KeyManager
from refreshd.mail.channel import MailChannel
from refreshd.mail.exchange import MailExchange
from refreshd.mail.publish import MailPublisher
from refreshd.mail.retrieval import KeyRequests
from refreshd.net.fetch import Fetcher
from refreshd.net.tor import TorSupervisor
from refreshd.own import OwnAudit, OwnKeys
from refreshd.privacy import UMASK, private_state_dir
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.rpc import RpcServer
from refreshd.service import Service
from refreshd.store import Store

__all__ = ["configure_logging", "prefer_the_loop", "run"]

SWITCH_INTERVAL = 0.001  # seconds
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 256 << 10

MAIL_MAX_BYTES = 4 << 20  # an answer larger than this is refused unread (a key is < 1 MiB)

# APScheduler references jobs by module-level name; they act on the running daemon.
_running: Daemon | None = None


async def own_key_check() -> None:
    """Daily: the own-key expiry policy (SPEC 7)."""
    if _running is not None:
        await _running.own.check()


async def database_maintenance() -> None:
    """Nightly: checkpoint the WAL, refresh query statistics (in a worker thread: O(N))."""
    if _running is not None:
        await trio.to_thread.run_sync(_maintain, _running.store)


async def cycle_watchdog() -> None:
    """Hourly: a refresh loop that fell far behind its deadline is reported, and woken."""
    if _running is None:
        return
    status = _running.refresher.status()
    nxt = status.get("next_refresh_at")
    if nxt and datetime.fromisoformat(nxt) < utcnow():
        _running.audit.emit("refresh.stalled", next_refresh_at=nxt)
        _running.refresher.wake()


def configure_logging() -> None:
    """Structured events to stderr (the journal under systemd), one JSON object per line."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries would log every URL fetched (contacts' addresses) and stem's chatter: the
    # audit log already records each fetch once, so keep them to real warnings.
    for name in ("httpx", "httpcore", "hpack", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("stem").setLevel(logging.CRITICAL)


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        private_state_dir(cfg.daemon.state_dir)
        self.audit = AuditLog(
            cfg.audit_file,
            rotate_bytes=cfg.audit.rotate_size,
            rotate_age=cfg.audit.rotate_age,
            keep=cfg.audit.keep,
        )
        self.store = Store(cfg.database)
        # decisions committed whose audit line a crash kept from the file (audit.py)
        self.audit.recover(self.store.audit_intents())
        with self.store.transaction():
            self.store.clear_audit_intents(self.audit.written_seq)
        self.keys = KeyManager(self.store, self.audit, cfg, utcnow)
        self.keys.correct_levels()  # a store written by an older refreshd, or changed pins
        self.tor = TorSupervisor(cfg, self.audit.emit)
        self.fetcher = Fetcher(cfg, self.tor)
        self.retriever = Retriever(cfg, self.fetcher, pins=self.keys, clock=utcnow)
        channel = MailChannel(cfg, self.tor)
        # The mail channel exists only when configured both ways (SPEC 10).
        self.mail = (
            MailExchange(channel, self.audit, MAIL_MAX_BYTES) if channel.configured else None
        )
        self.discovery = Discovery(
            self.keys,
            self.retriever,
            cfg,
            self.audit,
            utcnow,
            exit_of=self.tor.exit_of,
            exit_count=self.tor.exit_count,
            krp=None if self.mail is None else KeyRequests(cfg, self.mail, utcnow).ask,
        )
        self.feeds = Feeds(self.store, self.fetcher, cfg, self.audit)
        self.refresher = Refresher(self.keys, self.retriever, cfg, self.audit, feeds=self.feeds)
        release_freed_memory()  # what the start's O(N) work (a first cycle) left behind
        self.own = OwnKeys(
            cfg,
            self.store,
            self.audit,
            self.fetcher,
            utcnow,
            mail=None
            if self.mail is None
            else MailPublisher(
                cfg,
                self.mail,
                self.fetcher,
                self.audit,
                utcnow,
                None if cfg.tor.mode is TorMode.OFF else self.tor,
            ),
        )
        self.own_audit = OwnAudit(self.own, self.retriever)
        self.gnupg = GnupgBridge(cfg, self.keys, self.audit)
        self.service = Service(
            self.keys,
            discovery=self.discovery,
            refresher=self.refresher,
            own=self.own,
            tor_status=self.tor_status,
            import_gnupg=self.gnupg.import_keyring,
            importing=lambda: self.gnupg.importing,
        )
        self.server = RpcServer(self.service.methods(), emit=self.audit.emit)
        self.door = KeyserverDoor(
            self.keys, self.service.lookup, emit=self.audit.emit, clock=utcnow
        )

    def tor_status(self) -> dict[str, Any]:
        return {
            "mode": self.cfg.tor.mode.value,
            "state": self.tor.state.value,
            "detail": self.tor.detail,
        }

    async def serve(self) -> None:
        global _running
        _running = self
        inherited = sdnotify.listen_fds()
        if self.cfg.tor.allow_clearnet:
            self.audit.emit(
                "daemon.clearnet",
                reason="tor.allow_clearnet = true: requests may "
                "leave without Tor; for tests and diagnostics only",
            )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, nursery.cancel_scope)
                if inherited:  # socket activation: systemd owns the socket file
                    await nursery.start(partial(self.server.serve, inherited=inherited[0]))
                else:
                    await nursery.start(self.server.serve, self.cfg.daemon.socket)
                if self.cfg.serve.keyserver:  # bound before READY, like the socket
                    await nursery.start(self._door, self.cfg.serve.keyserver)
                counts = self.store.counts()
                self.audit.emit(
                    "daemon.started",
                    version=__version__,
                    socket=str(self.cfg.daemon.socket),
                    **counts,
                )
                sdnotify.notify(
                    "READY=1", f"STATUS=serving {counts['keys']} keys; Tor {self.tor.state.value}"
                )
                await nursery.start(self.tor.run)
                await nursery.start(self.discovery.run)
                await nursery.start(self.refresher.run)
                await nursery.start(self.feeds.run)
                if self.mail is not None:
                    await nursery.start(self.mail.run)
                await nursery.start(self.own.run)
                await nursery.start(self.own_audit.run)
                await nursery.start(self.gnupg.run)
                nursery.start_soon(self._scheduler)
        finally:
            sdnotify.notify("STOPPING=1")
            self.audit.emit("daemon.stopped")
            self.keys.worker.close()
            self.store.close()
            self.audit.close()
            _running = None

    async def _door(
        self, listen: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The keyserver door (SPEC 11); an address already in use leaves the socket serving."""
        try:
            listeners = await self.door.bind(listen)
        except OSError as exc:
            self.audit.emit("door.failed", address=listen, error=str(exc)[:300])
            task_status.started()
            return
        task_status.started()
        await self.door.serve(listeners)

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.audit.emit("daemon.stopping", signal=signal.Signals(signum).name)
                scope.cancel()
                return

    async def _scheduler(self) -> None:
        # apscheduler is imported after READY (nothing before it needs the scheduler), in a
        # worker thread, so the socket keeps answering while its modules load
        scheduler_type, store_type, interval = await trio.to_thread.run_sync(_scheduler_parts)
        async with scheduler_type(data_store=store_type()) as scheduler:
            await scheduler.add_schedule(own_key_check, interval(days=1), id="own-key")
            await scheduler.add_schedule(database_maintenance, interval(days=1), id="maintenance")
            await scheduler.add_schedule(cycle_watchdog, interval(hours=1), id="watchdog")
            await scheduler.run_until_stopped()


def _maintain(store: Store) -> None:
    store.maintain()
    release_freed_memory()  # what the checkpoint and ANALYZE allocated


def _scheduler_parts() -> tuple[Any, Any, Any]:
    from apscheduler import AsyncScheduler
    from apscheduler.datastores.memory import MemoryDataStore
    from apscheduler.triggers.interval import IntervalTrigger

    return AsyncScheduler, MemoryDataStore, IntervalTrigger


def _libc(name: str) -> Callable[..., int] | None:
    """A glibc function, or None elsewhere (there is nothing to call then)."""
    try:
        return getattr(ctypes.CDLL(None), name)  # type: ignore[no-any-return]
    except (AttributeError, OSError):
        return None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim): memory freed after
    a burst of start-up work otherwise stays in the daemon's RSS for its lifetime."""
    if (trim := _libc("malloc_trim")) is not None:
        trim(0)


def keep_large_blocks_apart() -> None:
    """Blocks of LARGE_BLOCK bytes and more (a packed order of 100,000 keys, SQLite's copy of
    it) get pages of their own, which go back to the kernel when freed. glibc raises that
    threshold after the first such block is freed and carves later ones from the heap, where
    their pages stay in the RSS (2-3 MB at 100,000 keys after a few dozen refreshes)."""
    if (mallopt := _libc("mallopt")) is not None:
        mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)


def prefer_the_loop() -> None:
    """A worker thread running Python (a new cycle's shuffle of 100,000 keys, a key read for
    the door) hands the interpreter lock back within SWITCH_INTERVAL once the trio loop asks
    for it, instead of CPython's default 5 ms: a lookup that needs the lock a few times
    (after each read, write and SQLite call) waits milliseconds, not tens of them."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def raise_fd_limit() -> None:
    """Use the hard fd limit: the soft default (1,024) is too few for clients plus our own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(cfg: Config) -> int:
    os.umask(UMASK)  # the user's alone, whatever umask we were started with (privacy.py)
    configure_logging()
    raise_fd_limit()
    prefer_the_loop()
    keep_large_blocks_apart()
    try:
        daemon = Daemon(cfg)
    except (OSError, RuntimeError) as exc:
        print(f"refreshd: cannot start: {exc}", file=sys.stderr)
        return 1
    trio.run(daemon.serve)
    return 0
