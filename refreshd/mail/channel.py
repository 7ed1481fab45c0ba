"""The mail channel's shell: SMTP submission (or a sendmail command) out, IMAP in (SPEC 10).

Rules:
- stdlib smtplib and imaplib, each session in a worker thread (trio.to_thread), every socket
  with network.timeout; the trio loop never blocks on mail.
- Through Tor when mail.via_tor (default): the socket is a SOCKS5 connection to Tor's SOCKS port
  with fresh random credentials (one circuit per session, IsolateSOCKSAuth) and the host name
  resolved by Tor (socks5h), as fetches do; when Tor is not ready nothing is opened. Direct
  connections only with via_tor = false, or with tor.mode = "off" and allow_clearnet.
- TLS always: implicit (smtps, imaps) or STARTTLS required (smtp+starttls), verified against
  the system store plus network.ca_file, host name checked.
- SASL PLAIN with the password from mail.password_file or the systemd credential
  refreshd-mail-password. The password is never logged nor put in an error.
- The EHLO name is "localhost": the client's host name is nobody's business.
- IMAP: only UID SEARCH for the criteria the caller gives, RFC822.SIZE, BODY.PEEK[] (which
  sets no flag) and, for a handled message, the configured action: a keyword ($Refreshd) and
  \\Seen, or a move to a folder. No other message is changed.
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import os
import secrets
import shlex
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import trio
from socksio import socks5

from refreshd.config import Config, TorMode
from refreshd.errors import MailError
from refreshd.net.tor import Endpoint, TorSupervisor

__all__ = ["MailChannel"]

HANDLED_KEYWORD = "$Refreshd"
EHLO_NAME = "localhost"
SEARCH_SAFE = frozenset('"\\\r\n')
_T = TypeVar("_T")
Connector = Callable[[str, int, float], socket.socket]


@dataclass(frozen=True)
class Door:
    """A parsed mail.submission or mail.imap URL."""

    scheme: str
    user: str
    host: str
    port: int
    mailbox: str = "INBOX"


DEFAULT_PORTS = {"smtp+starttls": 587, "smtps": 465, "imaps": 993}


def parse_door(url: str) -> Door:
    """`scheme://USER@HOST:PORT/MAILBOX` (USER may be percent-encoded, e.g. alice%40example.org)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise MailError(f"not a mail door URL: {url[:100]!r}")
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    return Door(
        parts.scheme,
        unquote(parts.username or ""),
        parts.hostname,
        parts.port or DEFAULT_PORTS[parts.scheme],
        mailbox,
    )


def search_criteria(terms: Sequence[tuple[str, str]]) -> list[str]:
    """IMAP SEARCH keys matching any of (header, value): not yet handled, OR-ed together."""
    if not terms:
        raise ValueError("nothing to search for")
    for header, value in terms:
        if set(header + value) & SEARCH_SAFE:
            raise MailError(f"cannot search for {value[:100]!r}")
    keys = [f'HEADER {header} "{value}"' for header, value in terms]
    while len(keys) > 1:
        keys = [f"OR ({keys[0]}) ({keys[1]})", *keys[2:]]
    return ["UNKEYWORD", HANDLED_KEYWORD, f"({keys[0]})"]


def socks_connect(endpoint: Endpoint, host: str, port: int, timeout: float) -> socket.socket:
    """A socket through Tor to host:port, on a circuit of its own (fresh credentials)."""
    if endpoint.path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(endpoint.path)
    else:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    try:
        conn = socks5.SOCKS5Connection()
        conn.send(socks5.SOCKS5AuthMethodsRequest([socks5.SOCKS5AuthMethod.USERNAME_PASSWORD]))
        _exchange(sock, conn)
        conn.send(
            socks5.SOCKS5UsernamePasswordRequest(
                secrets.token_hex(16).encode(), secrets.token_hex(16).encode()
            )
        )
        reply = _exchange(sock, conn)
        if not isinstance(reply, socks5.SOCKS5UsernamePasswordReply) or not reply.success:
            raise MailError("Tor refused the SOCKS credentials")
        conn.send(
            socks5.SOCKS5CommandRequest.from_address(socks5.SOCKS5Command.CONNECT, (host, port))
        )
        reply = _exchange(sock, conn, command=True)
        if (
            not isinstance(reply, socks5.SOCKS5Reply)
            or reply.reply_code != socks5.SOCKS5ReplyCode.SUCCEEDED
        ):
            code = getattr(reply, "reply_code", None)
            raise MailError(f"Tor could not open the connection to {host}:{port} ({code})")
    except BaseException:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, conn: socks5.SOCKS5Connection, command: bool = False) -> object:
    """Send what `conn` has queued, read one whole reply (a reply may arrive in pieces), parse."""
    sock.sendall(conn.data_to_send())
    data = _recv_exactly(sock, 2)
    if command:
        data += _recv_exactly(sock, 2)  # RSV, ATYP
        atyp = data[3]
        if atyp == 1:
            data += _recv_exactly(sock, 4 + 2)
        elif atyp == 4:
            data += _recv_exactly(sock, 16 + 2)
        elif atyp == 3:
            length = _recv_exactly(sock, 1)
            data += length + _recv_exactly(sock, length[0] + 2)
    return conn.receive_data(data)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise MailError("Tor closed the SOCKS connection")
        data += chunk
    return data


class _SMTP(smtplib.SMTP):
    def __init__(self, connector: Connector, host: str, port: int, timeout: float) -> None:
        self._connector = connector
        super().__init__(host, port, local_hostname=EHLO_NAME, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # type: ignore[override]
        return self._connector(host, port, timeout)


class _SMTPS(smtplib.SMTP_SSL):
    def __init__(
        self, connector: Connector, host: str, port: int, timeout: float, context: ssl.SSLContext
    ) -> None:
        self._connector = connector
        super().__init__(host, port, local_hostname=EHLO_NAME, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # type: ignore[override]
        return self.context.wrap_socket(self._connector(host, port, timeout), server_hostname=host)


class _IMAPS(imaplib.IMAP4_SSL):
    def __init__(
        self, connector: Connector, host: str, port: int, timeout: float, context: ssl.SSLContext
    ) -> None:
        self._connector = connector
        super().__init__(host, port, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = self._connector(self.host, self.port, timeout or 60.0)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def describe(exc: BaseException) -> str:
    """One sentence for a failed mail session (no password, no mail content)."""
    if isinstance(exc, MailError):
        return exc.reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"the submission server refused the login ({exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "the submission server refused the recipient"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the submission server answered {exc.smtp_code}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return "the submission server does not offer STARTTLS or AUTH PLAIN"
    if isinstance(exc, imaplib.IMAP4.error):
        return "the IMAP server refused the session"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "mail connection timed out"
    if isinstance(exc, OSError):
        return f"mail connection failed ({exc.strerror or type(exc).__name__})"
    return f"mail session failed ({type(exc).__name__})"


class MailChannel:
    """Sends refreshd's mails and reads the answers; every call is one session."""

    def __init__(self, cfg: Config, tor: TorSupervisor | None) -> None:
        self.cfg = cfg
        self.tor = tor
        self.submission = parse_door(cfg.mail.submission) if cfg.mail.submission else None
        self.imap = parse_door(cfg.mail.imap) if cfg.mail.imap else None
        if cfg.network.ca_file:  # read now: a wrong path stops the start
            self._ssl.load_verify_locations(cafile=cfg.network.ca_file)
        self._direct = not cfg.mail.via_tor or (
            cfg.tor.mode is TorMode.OFF and cfg.tor.allow_clearnet
        )

    @functools.cached_property
    def _ssl(self) -> ssl.SSLContext:
        """The system's CA store is loaded at the first TLS connection, not at start (tens of
        milliseconds before READY otherwise)."""
        return ssl.create_default_context()

    @property
    def configured(self) -> bool:
        """Both ways are there: a way out (submission or sendmail) and IMAP for the answers."""
        return bool(self.submission or self.cfg.mail.sendmail) and self.imap is not None

    def _password(self) -> str:
        candidates = []
        if self.cfg.mail.password_file:
            candidates.append(Path(self.cfg.mail.password_file).expanduser())
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "refreshd-mail-password")
        for path in candidates:
            with contextlib.suppress(OSError):
                return path.read_text(encoding="utf-8").rstrip("\r\n")
        raise MailError("no mail password (mail.password_file or refreshd-mail-password)")

    def _connector(self) -> Connector:
        if self._direct:
            return lambda host, port, timeout: socket.create_connection((host, port), timeout)
        endpoint = self.tor.socks_endpoint if self.tor is not None and self.tor.ready else None
        if endpoint is None:
            raise MailError("Tor unavailable")
        tor: Endpoint = endpoint
        return lambda host, port, timeout: socks_connect(tor, host, port, timeout)

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        timeout = self.cfg.network.timeout
        with trio.move_on_after(timeout * 2) as scope:
            try:
                return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except MailError:
                raise
            except Exception as exc:  # the stdlib clients raise every kind of error
                raise MailError(describe(exc)) from exc
        assert scope.cancelled_caught
        raise MailError(f"mail session timed out after {timeout * 2} s")

    # -- out --------------------------------------------------------------------------------

    async def send(self, mail: bytes, sender: str, recipients: Sequence[str]) -> None:
        """Hand one mail to the submission server (or the sendmail command)."""
        if self.cfg.mail.sendmail:
            await self._sendmail(mail, recipients)
            return
        if self.submission is None:
            raise MailError("no mail.submission configured")
        door, password, connector = self.submission, self._password(), self._connector()
        timeout = float(self.cfg.network.timeout)
        context = self._ssl

        def submit() -> None:
            client: smtplib.SMTP
            if door.scheme == "smtps":
                client = _SMTPS(connector, door.host, door.port, timeout, context)
            else:
                client = _SMTP(connector, door.host, door.port, timeout)
            with client:
                if door.scheme == "smtp+starttls":
                    client.starttls(context=context)
                client.ehlo(EHLO_NAME)
                client.user, client.password = door.user, password
                client.auth("PLAIN", client.auth_plain)
                client.sendmail(sender, list(recipients), mail)

        await self._in_thread(submit)

    async def _sendmail(self, mail: bytes, recipients: Sequence[str]) -> None:
        argv = shlex.split(self.cfg.mail.sendmail)
        if "-t" not in argv:
            argv += ["-i", "--", *recipients]
        with trio.move_on_after(self.cfg.network.timeout) as scope:
            done = await trio.run_process(
                argv, stdin=mail, capture_stdout=True, capture_stderr=True, check=False
            )
        if scope.cancelled_caught:
            raise MailError(f"{argv[0]} did not finish in {self.cfg.network.timeout} s")
        if done.returncode != 0:
            raise MailError(f"{argv[0]} failed with exit status {done.returncode}")

    # -- in ---------------------------------------------------------------------------------

    async def search(
        self, terms: Sequence[tuple[str, str]], max_bytes: int
    ) -> list[tuple[str, bytes | None]]:
        """Not yet handled messages matching any term: (UIDVALIDITY:UID, bytes or None when
        larger than `max_bytes`). Read with BODY.PEEK, so nothing is marked."""
        criteria = search_criteria(terms)

        def work(client: imaplib.IMAP4_SSL, validity: str) -> list[tuple[str, bytes | None]]:
            typ, data = client.uid("SEARCH", *criteria)
            if typ != "OK":
                raise MailError("the IMAP server refused the search")
            found: list[tuple[str, bytes | None]] = []
            for uid in (data[0] or b"").split()[:64]:
                uid_s = uid.decode()
                typ, sized = client.uid("FETCH", uid_s, "(RFC822.SIZE)")
                size = _size(sized)
                if size is None or size > max_bytes:
                    found.append((f"{validity}:{uid_s}", None))
                    continue
                typ, body = client.uid("FETCH", uid_s, "(BODY.PEEK[])")
                raw = next((part[1] for part in body if isinstance(part, tuple)), None)
                found.append((f"{validity}:{uid_s}", raw if isinstance(raw, bytes) else None))
            return found

        return await self._in_thread(lambda: self._imap_session(work))

    async def mark_handled(self, ids: Sequence[str]) -> None:
        """The configured action for messages refreshd handled (and only those)."""
        folder = self.cfg.mail.handled

        def work(client: imaplib.IMAP4_SSL, validity: str) -> None:
            for item in ids:
                item_validity, _, uid = item.partition(":")
                if item_validity != validity:
                    continue  # the mailbox was recreated: that UID names another message now
                if folder == "flag":
                    client.uid("STORE", uid, "+FLAGS", f"({HANDLED_KEYWORD} \\Seen)")
                else:
                    client.create(_quote(folder))
                    client.uid("STORE", uid, "+FLAGS", f"({HANDLED_KEYWORD} \\Seen)")
                    typ, _ = client.uid("MOVE", uid, _quote(folder))
                    if typ != "OK":
                        raise MailError(f"the IMAP server would not move a message to {folder}")

        await self._in_thread(lambda: self._imap_session(work))

    def _imap_session(self, work: Callable[[imaplib.IMAP4_SSL, str], _T]) -> _T:
        if self.imap is None:
            raise MailError("no mail.imap configured")
        door, password, connector = self.imap, self._password(), self._connector()
        client = _IMAPS(connector, door.host, door.port, float(self.cfg.network.timeout), self._ssl)
        try:
            client.login(door.user, password)
            typ, _ = client.select(_quote(door.mailbox))
            if typ != "OK":
                raise MailError(f"no mailbox {door.mailbox!r}")
            _, validity = client.response("UIDVALIDITY")
            return work(client, (validity[0] or b"0").decode())
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()


def _quote(mailbox: str) -> str:
    if set(mailbox) & SEARCH_SAFE:
        raise MailError(f"unusable mailbox name {mailbox[:100]!r}")
    return f'"{mailbox}"'


def _size(data: list[object]) -> int | None:
    for item in data:
        text = item.decode() if isinstance(item, bytes) else ""
        marker = text.find("RFC822.SIZE ")
        if marker >= 0:
            digits = text[marker + 12 :].split(")")[0].split()[0]
            return int(digits) if digits.isdigit() else None
    return None
