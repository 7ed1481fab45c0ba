"""The `refreshd` command (SPEC section 2): parse, make one JSON-RPC call, print the answer.

Rules:
- Exit codes: 0 ok, 1 failure (an error from the daemon or a negative verdict), 2 usage error
  or bad config, 3 the daemon is not running (with a one-line hint how to start it).
- Negative verdicts: `lookup` without a usable key, `observe`/`verify` ending `rejected`,
  `audit verify` on a broken chain.
- `--config PATH` works before or after any command name; client commands take `--json` and
  then print the raw JSON-RPC result instead of the readable text.
- Client commands only talk to the daemon (the one writer of the state); `run` starts it and
  `audit verify` reads the log file directly, so it works with the daemon stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from refreshd import audit, config
from refreshd.core.levels import MAIL_ORIGINS, Dkim
from refreshd.openpgp.packets import armor

__all__ = ["main"]

OK, FAILURE, USAGE, NOT_RUNNING = 0, 1, 2, 3
NOT_RUNNING_HINT = (
    "refreshd is not running; start it with `systemctl --user start refreshd` or `refreshd run`"
)
CONNECT_TIMEOUT = 5.0
PROGRESS_EVERY = 0.5  # seconds between two progress lines of import-gnupg
ANSWER_TIMEOUT = 120.0  # own generate and import-gnupg may take a while on a slow machine
LOOKUP_MARGIN = 60.0  # on top of --wait: the daemon answers once its wait is over
MAX_ANSWER_BYTES = 64 * 1024 * 1024
ORIGINS = tuple(origin.value for origin in MAIL_ORIGINS)
USE_EVENTS = {"sent": "sent-encrypted", "received": "received-signed"}
_FINGERPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")


class UsageError(Exception):
    """A bad argument found after parsing (unreadable file, malformed fingerprint)."""


class DaemonNotRunning(Exception):
    """No socket, or nobody listening on it."""


class DaemonError(Exception):
    """The daemon answered with a JSON-RPC error, or with something that is not JSON-RPC."""


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    timeout: float = ANSWER_TIMEOUT


# --- socket client (the only I/O besides reading argument files) ---


def call(path: Path, request: Call) -> Any:
    """Send one JSON-RPC request over the daemon's socket and return its result."""
    line = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": request.method, "params": request.params},
        ensure_ascii=False,
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(str(path)) from exc
        trust_peer(sock, path)
        sock.settimeout(request.timeout)
        sock.sendall(line.encode("utf-8") + b"\n")
        return parse_answer(_read_line(sock))


def trust_peer(sock: socket.socket, path: Path) -> None:
    """Only a daemon of this user is believed: whoever could replace the socket file (the
    fallback directory's parent is shared) must not be able to answer for it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise DaemonError(
            f"the socket {path} is served by uid {uid} (pid {pid}), not by this user "
            f"(uid {os.getuid()}); its answers are not trusted"
        )


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise DaemonError("the daemon closed the connection without a complete answer")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise DaemonError("the daemon's answer is larger than 64 MiB")


def parse_answer(line: bytes) -> Any:
    """The result of a JSON-RPC response line; DaemonError for errors and garbage."""
    try:
        answer = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DaemonError(f"the daemon's answer is not JSON ({exc})") from exc
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0":
        raise DaemonError("the daemon's answer is not a JSON-RPC 2.0 response")
    error = answer.get("error")
    if isinstance(error, dict):
        message = error.get("message", "unknown error")
        raise DaemonError(f"{message} (JSON-RPC error {error.get('code')})")
    if "result" not in answer:
        raise DaemonError("the daemon's answer has neither result nor error")
    return answer["result"]


# --- requests: arguments -> socket method and params ---


def fingerprint(text: str) -> str:
    """Upper-case hex without spaces or 0x, as shown by gpg; UsageError otherwise."""
    compact = re.sub(r"\s+", "", text).upper().removeprefix("0X")
    if not _FINGERPRINT.match(compact):
        raise UsageError(f"{text!r} is not a fingerprint (40 or 64 hex digits)")
    return compact


def key_text(data: bytes, name: str, *, secret: bool = False) -> str:
    """The socket carries text: a binary public key is armored, armored text goes as it is."""
    if data[:1] and data[0] & 0x80:  # the first byte of an OpenPGP packet has its top bit set
        if secret:
            raise UsageError(
                f"{name} holds a binary secret key; export it armored "
                "(gpg --armor --export-secret-keys)"
            )
        return armor(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name} is neither an armored key nor UTF-8 text") from exc


def _read(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from exc


def _lookup(args: argparse.Namespace) -> Call:
    wait = int(args.wait) if float(args.wait).is_integer() else args.wait
    params = {"address": args.address, "discover": not args.no_discover, "wait": wait}
    return Call("lookup", params | {"armor": args.armor}, timeout=args.wait + LOOKUP_MARGIN)


def _observe(args: argparse.Namespace) -> Call:
    params = {
        "address": args.address,
        "key": key_text(_read(args.key), args.key),
        "origin": args.origin,
    }
    if args.dkim:
        params["dkim"] = args.dkim
    if args.url:
        params["url"] = args.url
    return Call("observe", params)


def _used(args: argparse.Namespace) -> Call:
    event = USE_EVENTS[args.direction]
    return Call(
        "used", {"address": args.address, "fingerprint": fingerprint(args.fpr), "event": event}
    )


def _verify(args: argparse.Namespace) -> Call:
    return Call("verify", {"address": args.address, "fingerprint": fingerprint(args.fpr)})


def _refresh(args: argparse.Namespace) -> Call:
    if "@" not in args.target:
        return Call("refresh", {"fingerprint": fingerprint(args.target)})
    return Call("refresh", {"address": args.target})


def _import_gnupg(args: argparse.Namespace) -> Call:
    params = {"homedir": str(Path(args.homedir).expanduser())} if args.homedir else {}
    return Call("import_gnupg", params, timeout=10 * ANSWER_TIMEOUT)


def _own_generate(args: argparse.Namespace) -> Call:
    params = {"address": args.address} | ({"name": args.name} if args.name else {})
    return Call("own_generate", params)


def _own_import(args: argparse.Namespace) -> Call:
    params = {"key": key_text(_read(args.file), args.file, secret=True)}
    if args.passphrase_file:
        lines = _read(args.passphrase_file).decode("utf-8", "replace").splitlines()
        params["passphrase"] = lines[0] if lines else ""
    return Call("own_import", params)


# --- rendering: result -> readable text (pure) ---

# What a terminal would act on rather than show: C0 and C1 controls and DEL (ESC starts CSI,
# backspace overwrites), bidi embeddings/overrides/isolates and marks, invisible format
# characters, line and paragraph separators, and lone surrogates (which cannot be printed).
_BEYOND_C0 = "\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2069\ufeff\ud800-\udfff"
_UNSHOWABLE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
_UNSHOWABLE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")  # json.dumps escapes C0 itself


def escaped(text: str, *, keep_newlines: bool = False) -> str:
    """Text with everything a terminal would act on written as a visible escape (\\x1b)."""

    def visible(m: re.Match[str]) -> str:
        c = m.group()
        if keep_newlines and c == "\n":
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _UNSHOWABLE.sub(visible, text)


def displayable(value: Any) -> Any:
    """A daemon's result with every string escaped for a terminal, before it is rendered
    (armored keys keep their line breaks)."""
    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, list):
        return [displayable(v) for v in value]
    if isinstance(value, dict):
        return {
            escaped(str(k)): escaped(v, keep_newlines=True)
            if k == "key" and isinstance(v, str)
            else displayable(v)
            for k, v in value.items()
        }
    return value


def when(value: Any, *, date_only: bool = False) -> str:
    """ISO 8601 as "2027-05-01" or "2027-05-01 12:00 UTC"; anything else as it came."""
    if value is None:
        return "never"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if date_only:
        return moment.date().isoformat()
    text = moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    if offset is None:
        return text
    return f"{text} UTC" if not offset else f"{text} {moment.strftime('%z')}"


def plain(value: Any) -> str:
    """A field of any shape as one short line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items()) or "none"
    return str(value)


def _why(result: dict[str, Any]) -> list[str]:
    return [f"  why: {result['reason']}"] if result.get("reason") else []


def render_lookup(result: dict[str, Any]) -> str:
    address, state, fpr = result.get("address"), result.get("state"), result.get("fingerprint")
    if not fpr:
        head = f"{address}: no key yet, discovery is running" if state == "pending" else None
        lines = [head or f"{address}: no key ({state})"]
    else:
        condition = (
            "revoked"
            if result.get("revoked")
            else ("usable" if result.get("usable") else "not usable")
        )
        expires = result.get("expires")
        lines = [
            f"{address}: {fpr} ({result.get('validation')}, from {result.get('source')}) "
            f"{condition}, encrypt: {plain(bool(result.get('encrypt')))}, "
            + (f"expires {when(expires, date_only=True)}" if expires else "does not expire")
            + ("" if state in (None, "registered") else f", {state}")
        ]
    lines += _why(result)
    if result.get("key"):
        lines.append(str(result["key"]).rstrip("\n"))
    return "\n".join(lines)


def render_decision(result: dict[str, Any]) -> str:
    head = f"{result.get('decision')}: {result.get('fingerprint')} ({result.get('validation')})"
    return "\n".join([head, *_why(result)])


def render_used(result: dict[str, Any]) -> str:
    return f"recorded; key successfully used: {plain(bool(result.get('successfully_used')))}"


def table(columns: dict[str, Callable[[dict[str, Any]], str]], rows: list[Any]) -> list[str]:
    """Aligned columns, each row followed by its "why" line."""
    records = [r for r in rows if isinstance(r, dict)]
    cells = [tuple(columns)] + [tuple(cell(r) for cell in columns.values()) for r in records]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    out = [line(cells[0])]
    for row, record in zip(cells[1:], records, strict=True):
        out += [line(row), *_why(record)]
    return out


KEY_COLUMNS: dict[str, Callable[[dict[str, Any]], str]] = {
    "STATUS": lambda k: plain(k.get("status")),
    "VALIDATION": lambda k: plain(k.get("validation")),
    "FINGERPRINT": lambda k: plain(k.get("fingerprint")),
    "FIRST SEEN": lambda k: when(k.get("first_seen")),
    "LAST SEEN": lambda k: when(k.get("last_seen")),
    "SOURCE": lambda k: plain(k.get("source")),
}
DECISION_COLUMNS: dict[str, Callable[[dict[str, Any]], str]] = {
    "WHEN": lambda d: when(d.get("ts")),
    "DECISION": lambda d: plain(d.get("decision")),
    "FINGERPRINT": lambda d: plain(d.get("fingerprint")),
    "LEVEL": lambda d: plain(d.get("level")),
    "SOURCE": lambda d: plain(d.get("source")),
    "RULE": lambda d: plain(d.get("rule")),
}


def render_history(result: dict[str, Any]) -> str:
    keys, decisions = result.get("keys") or [], result.get("decisions") or []
    if not keys and not decisions:
        return "no key seen for this address"
    out = table(KEY_COLUMNS, keys)
    if decisions:
        out += ["", "decisions, oldest first:", *table(DECISION_COLUMNS, decisions)]
    return "\n".join(out)


def render_refresh(result: dict[str, Any]) -> str:
    return f"refresh scheduled at {when(result.get('scheduled_at'))}"


def _audit_lines(audit: Any) -> list[str]:
    """The own-key audit (SPEC 7): a mismatch is a warning a person notices."""
    if not isinstance(audit, dict):
        return []
    state, checked = audit.get("state"), audit.get("checked_at")
    findings = [f for f in audit.get("findings") or [] if isinstance(f, dict)]
    if state == "mismatch":
        bad = [f for f in findings if f.get("result") not in ("ok", "absent", "unreachable")]
        return [
            f"  WARNING: a directory publishes something else for your address "
            f"(audit of {when(checked)}):",
            *(f"    {f.get('address')} at {f.get('source')}: {f.get('detail')}" for f in bad),
        ]
    if state == "ok":
        asked = ", ".join(
            f"{f.get('source')} {f.get('result')}" for f in findings if isinstance(f, dict)
        )
        return [f"  audit: ok at {when(checked)} ({asked})"]
    return ["  audit: not checked yet"]


def _own_entry(entry: Any) -> str:
    if not isinstance(entry, dict):
        return plain(entry)
    known = ("fingerprint", "address", "expires", "next_extension_at", "last_upload", "audit")
    extra = {k: v for k, v in entry.items() if k not in known}
    return "\n".join(
        [
            f"{entry.get('fingerprint')} <{entry.get('address')}> "
            f"expires {when(entry.get('expires'), date_only=True)}, "
            f"next extension {when(entry.get('next_extension_at'), date_only=True)}, "
            "last upload "
            f"{plain(entry.get('last_upload')) if entry.get('last_upload') else 'never'}"
            + (f", {plain(extra)}" if extra else ""),
            *_audit_lines(entry.get("audit")),
        ]
    )


def render_own(result: Any) -> str:
    entries = result if isinstance(result, list) else [result]
    if not entries:
        return "no own key; create one with `refreshd own generate ADDRESS` or `own import FILE`"
    return "\n".join(_own_entry(e) for e in entries)


def span(seconds: float) -> str:
    """A duration as people say it: "7 days", "2.5 hours", "10 minutes"."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{round(seconds / size, 1):g} {unit}"
    return f"{seconds:g} seconds"


def _refresh_lines(refresh: Any) -> list[str]:
    """The refresh engine's progress, when the daemon reports it."""
    if not isinstance(refresh, dict):
        return []
    lines = []
    if refresh.get("keys_in_cycle"):
        cycle = (
            f"refresh cycle {refresh.get('cycle')}: {refresh.get('position')} of "
            f"{refresh['keys_in_cycle']} keys done"
        )
        if isinstance(refresh.get("effective_period_seconds"), int | float):
            cycle += f", a cycle takes {span(refresh['effective_period_seconds'])}"
        if refresh.get("lengthened"):
            cycle += " (longer than refresh.period: minimum_lapse bounds the rate)"
        lines.append(cycle)
    if refresh.get("last"):
        lines.append(f"last refresh: {plain(refresh['last'])}")
    if refresh.get("failures_by_host"):
        lines.append(f"refresh failures: {plain(refresh['failures_by_host'])}")
    return lines


def render_status(result: dict[str, Any]) -> str:
    tor = result.get("tor") if isinstance(result.get("tor"), dict) else {}
    detail = f": {tor['detail']}" if tor.get("detail") else ""
    known = ("version", "tor", "keys", "addresses", "next_refresh_at", "refresh", "own")
    lines = [
        f"daemon: running (refreshd {result.get('version')})",
        f"tor: {tor.get('state')} (mode {tor.get('mode')}){detail}",
        f"keys: {result.get('keys')} for {result.get('addresses')} addresses",
        f"next refresh: {when(result.get('next_refresh_at'))}",
        *_refresh_lines(result.get("refresh")),
        *[f"{k.replace('_', ' ')}: {plain(v)}" for k, v in result.items() if k not in known],
    ]
    if not result.get("own"):
        return "\n".join([*lines, "own keys: none"])
    own = result["own"] if isinstance(result["own"], list) else []
    if any(isinstance(e, dict) and (e.get("audit") or {}).get("state") == "mismatch" for e in own):
        lines.insert(0, "WARNING: your own key's publication does not match (see own keys below)")
    return "\n".join(
        [*lines, "own keys:", *(f"  {x}" for x in render_own(result["own"]).splitlines())]
    )


def render_plain(result: Any) -> str:
    if isinstance(result, dict):
        return "\n".join(f"{k.replace('_', ' ')}: {plain(v)}" for k, v in result.items())
    return plain(result)


# --- verdicts: which results count as failures (exit 1) ---


def lookup_ok(result: Any) -> bool:
    return (
        isinstance(result, dict)
        and bool(result.get("fingerprint"))
        and result.get("usable") is True
    )


def decision_ok(result: Any) -> bool:
    return not (isinstance(result, dict) and result.get("decision") == "rejected")


def always_ok(result: Any) -> bool:
    return True


@dataclass(frozen=True)
class ClientCommand:
    request: Callable[[argparse.Namespace], Call]
    render: Callable[[Any], str]
    verdict: Callable[[Any], bool] = always_ok


CLIENT_COMMANDS: dict[str, ClientCommand] = {
    "status": ClientCommand(lambda a: Call("status", {}), render_status),
    "lookup": ClientCommand(_lookup, render_lookup, lookup_ok),
    "observe": ClientCommand(_observe, render_decision, decision_ok),
    "used": ClientCommand(_used, render_used),
    "verify": ClientCommand(_verify, render_decision, decision_ok),
    "history": ClientCommand(lambda a: Call("history", {"address": a.address}), render_history),
    "refresh": ClientCommand(_refresh, render_refresh),
    "import-gnupg": ClientCommand(_import_gnupg, render_plain),
    "own generate": ClientCommand(_own_generate, render_own),
    "own import": ClientCommand(_own_import, render_own),
    "own status": ClientCommand(lambda a: Call("own", {}), render_own),
}


# --- commands ---


def progress_line(importing: dict[str, Any], now: float) -> str:
    """One terminal line for an import under way: a count, a share and a rate."""
    done, total = int(importing.get("done", 0)), int(importing.get("total", 0))
    seconds = max(now - float(importing.get("started_at", now)), 1e-6)
    share = f" ({100 * done // total}%)" if total else ""
    return f"importing: {done:,} of {total:,} keys{share}, {done / seconds:,.0f} keys/s"


def _with_progress(path: Path, request: Call) -> Any:
    """The import call, with its progress on stderr (read from `status` on a second
    connection every PROGRESS_EVERY seconds) and a closing line with the time it took."""
    began = time.monotonic()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call(path, request)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    shown = False
    while worker.is_alive():
        worker.join(PROGRESS_EVERY)
        if not worker.is_alive():
            break
        with contextlib.suppress(OSError, DaemonError):
            importing = call(path, Call("status", {})).get("import_gnupg")
            if importing:
                print("\r" + progress_line(importing, time.time()), end="", file=sys.stderr)
                shown = True
    if shown:
        print("\r\033[K", end="", file=sys.stderr)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    print(f"import took {time.monotonic() - began:.1f} s", file=sys.stderr)
    return result


def run_client(cfg: config.Config, args: argparse.Namespace) -> int:
    command = CLIENT_COMMANDS[args.command]
    request = command.request(args)
    try:
        if args.command == "import-gnupg" and not args.json and sys.stderr.isatty():
            result = _with_progress(cfg.daemon.socket, request)
        else:
            result = call(cfg.daemon.socket, request)
    except OSError as exc:  # a timeout, a socket of another user, a path too long
        raise DaemonError(f"cannot talk to the daemon at {cfg.daemon.socket}: {exc}") from exc
    if args.json:
        text = json.dumps(result, indent=2, ensure_ascii=False)  # C0 is escaped already
        print(_UNSHOWABLE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    else:
        print(command.render(displayable(result)))
    return OK if command.verdict(result) else FAILURE


def run_daemon(cfg: config.Config, args: argparse.Namespace) -> int:
    from refreshd import daemon  # the daemon pulls in trio, Tor and the core: only for `run`

    return daemon.run(cfg)


def install_service(cfg: config.Config, args: argparse.Namespace) -> int:
    from refreshd import install

    directory = Path(args.dir).expanduser() if args.dir else None
    return OK if install.install(directory, enable=not args.no_enable) else FAILURE


def audit_verify(cfg: config.Config, args: argparse.Namespace) -> int:
    verdict = audit.verify(cfg.audit_file)
    if args.json:
        fields = {"ok": verdict.ok, "lines": verdict.lines, "file": verdict.file}
        fields |= {"line": verdict.line, "reason": verdict.reason}
        print(json.dumps(fields, default=str))
    elif verdict.ok:
        print(f"audit log intact: {verdict.lines} lines")
    else:
        print(f"audit log broken at {verdict.file} line {verdict.line}: {verdict.reason}")
    return OK if verdict.ok else FAILURE


# --- argument parsing ---


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS,
        help="config file (default: $REFRESHD_CONFIG, then $XDG_CONFIG_HOME/refreshd/config.toml)",
    )  # fmt: skip
    with_json = argparse.ArgumentParser(add_help=False, parents=[with_config])
    with_json.add_argument("--json", action="store_true", help="print the raw JSON-RPC result")

    parser = argparse.ArgumentParser(
        prog="refreshd",
        parents=[with_config],
        description="Keeps your contacts' OpenPGP keys fresh over Tor and your own key alive.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage or config error, 3 daemon not running",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, text: str, parent: argparse.ArgumentParser = with_json
    ) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, parents=[parent])

    add("run", "run the daemon in the foreground", with_config).set_defaults(handler=run_daemon)
    add("status", "daemon, Tor, key counts, next refresh, own keys")

    lookup = add("lookup", "which key to use for an address, and why")
    lookup.add_argument("address")
    lookup.add_argument("--no-discover", action="store_true", help="only what is known already")
    lookup.add_argument(
        "--wait", type=_seconds, default=0, metavar="SECONDS",
        help="wait up to SECONDS for discovery of an unknown address",
    )  # fmt: skip
    lookup.add_argument("--armor", action="store_true", help="print the armored key too")

    observe = add("observe", "report a key seen in mail")
    observe.add_argument("address")
    observe.add_argument("--key", required=True, metavar="FILE", help="armored key ('-': stdin)")
    observe.add_argument("--origin", required=True, choices=ORIGINS)
    observe.add_argument("--dkim", choices=tuple(d.value for d in Dkim))
    observe.add_argument("--url", help="the OpenPGP header's url")

    used = add("used", "record use of a key (encrypted to it, or signed mail from it)")
    used.add_argument("address")
    used.add_argument("fpr", metavar="FPR")
    used.add_argument("direction", choices=tuple(USE_EVENTS))

    verify = add("verify", "record that you verified a fingerprint with its owner")
    verify.add_argument("address")
    verify.add_argument("fpr", metavar="FPR")

    add("history", "every key seen for an address and its fate").add_argument("address")
    add("refresh", "refresh an address or fingerprint soon").add_argument(
        "target", metavar="ADDRESS|FPR"
    )
    add("import-gnupg", "register the public keys of a GnuPG keyring").add_argument(
        "--homedir", metavar="DIR"
    )

    own = add("own", "your own key", with_config).add_subparsers(
        dest="own_command", required=True, metavar="generate|import|status"
    )
    generate = own.add_parser("generate", parents=[with_json], help="create your key")
    generate.add_argument("address")
    generate.add_argument("--name", help="real name for the user id")
    imported = own.add_parser("import", parents=[with_json], help="adopt an existing secret key")
    imported.add_argument("file", metavar="FILE", help="armored secret key ('-': stdin)")
    imported.add_argument("--passphrase-file", metavar="F", help="its passphrase (first line)")
    own.add_parser("status", parents=[with_json], help="expiry, next extension, last upload")

    service = add(
        "install-service",
        "write the systemd user units for this installation, then reload and enable them",
        with_config,
    )
    service.add_argument("--dir", metavar="DIR", help="write the units here and enable nothing")
    service.add_argument("--no-enable", action="store_true", help="only write the units")
    service.set_defaults(handler=install_service)

    audit_commands = add("audit", "the audit log", with_config).add_subparsers(
        dest="audit_command", required=True, metavar="verify"
    )
    audit_commands.add_parser(
        "verify", parents=[with_json], help="check the hash chain (works without the daemon)"
    ).set_defaults(handler=audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.command == "own":
        args.command = f"own {args.own_command}"
    handler = getattr(args, "handler", run_client)
    try:
        cfg = config.load(getattr(args, "config", None))
        return handler(cfg, args)
    except config.ConfigError as exc:
        print(f"refreshd: bad config: {escaped(str(exc))}", file=sys.stderr)
        return USAGE
    except UsageError as exc:
        print(f"refreshd: error: {escaped(str(exc))}", file=sys.stderr)
        return USAGE
    except DaemonNotRunning:
        print(NOT_RUNNING_HINT, file=sys.stderr)
        return NOT_RUNNING
    except DaemonError as exc:
        print(f"refreshd: {escaped(str(exc))}", file=sys.stderr)
        return FAILURE
