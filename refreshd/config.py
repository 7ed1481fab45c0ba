"""Configuration: lookup order, embedded defaults, strict validation (SPEC section 3).

Rules:
- The file is found as --config, then $REFRESHD_CONFIG, then $XDG_CONFIG_HOME/refreshd/config.toml;
  with none of them present the embedded defaults apply and the daemon still runs.
- Every key has a default. An unknown key or a bad value stops the start with a message that
  names the key (`ConfigError`), which the CLI turns into exit code 2.
- Durations are integers (seconds) or strings like "600s", "10m", "7d", "6mo" (30 days).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from refreshd.core.levels import LEVELS, Level, Way
from refreshd.core.ownaudit import Upload

__all__ = [
    "Config",
    "ConfigError",
    "RefreshConfig",
    "TorMode",
    "expand_path",
    "from_mapping",
    "load",
]
# the sources discovery.order may list (its words are the values of levels.Way)
SOURCES = (Way.NICKNYM, Way.WKD, Way.VKS, Way.HKP, Way.SMTP)
DEFAULT_ORDER = (Way.NICKNYM, Way.WKD, Way.VKS, Way.HKP)
UPLOADS = tuple(Upload)

_UNITS = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "mo": 30 * 86400,
    "y": 365 * 86400,
}
_DURATION = re.compile(r"^\s*(\d+)\s*(mo|s|m|h|d|w|y)?\s*$")


class ConfigError(Exception):
    """A config problem; the message names the key and how to fix it."""


def parse_duration(value: object, key: str = "duration") -> int:
    """Seconds from an int or a string like "10m" / "7d" / "6mo"."""
    if isinstance(value, bool):
        raise ConfigError(f'{key}: expected a duration like "10m" or "7d", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: a duration cannot be negative ({value})")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ConfigError(
        f'{key}: expected a duration like "600s", "10m", "7d" or "6mo", got {value!r}'
    )


def expand_path(value: str) -> Path:
    """Expand ~ and $VARS; $XDG_RUNTIME_DIR falls back to /run/user/UID, then a temp dir."""
    env = dict(os.environ)
    if "XDG_RUNTIME_DIR" not in env:
        run_user = Path(f"/run/user/{os.getuid()}")
        env["XDG_RUNTIME_DIR"] = str(
            run_user if run_user.is_dir() else Path("/tmp") / f"refreshd-{os.getuid()}"
        )
    expanded = re.sub(
        r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value
    )
    return Path(expanded).expanduser()


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = field(default_factory=lambda: expand_path("~/.local/state/refreshd"))
    socket: Path = field(default_factory=lambda: expand_path("$XDG_RUNTIME_DIR/refreshd/socket"))


class TorMode(StrEnum):
    """tor.mode: use the system Tor (system), launch a private one (launch), the system Tor if
    it answers else a private one (auto), or no Tor at all (off, only with allow_clearnet)."""

    AUTO = "auto"
    SYSTEM = "system"
    LAUNCH = "launch"
    OFF = "off"


@dataclass(frozen=True)
class TorConfig:
    mode: TorMode = TorMode.AUTO
    socks: str = "127.0.0.1:9050"
    control: str = "unix:/run/tor/control"
    allow_clearnet: bool = False


@dataclass(frozen=True)
class NetworkConfig:
    ca_file: str = ""
    connect_to: tuple[str, ...] = ()
    timeout: int = 120
    max_response_bytes: int = 33554432
    max_key_bytes: int = 1048576


@dataclass(frozen=True)
class RefreshConfig:
    period: int = 7 * 86400
    # 30 s, not parcimonie's 10 min: see core/schedule.py ("Why this floor"); 10,000 keys
    # fit the default period (a cycle lengthens above period / (1.5 * 30 s) = 13,440 keys).
    minimum_lapse: int = 30


@dataclass(frozen=True)
class DiscoveryConfig:
    order: tuple[Way, ...] = DEFAULT_ORDER
    vks: tuple[str, ...] = ("https://keys.openpgp.org",)
    hkp: tuple[str, ...] = ()
    minimum_validation: Level = Level.WEAK_CHAIN


@dataclass(frozen=True)
class OwnConfig:
    key_file: str = ""
    passphrase_file: str = ""
    new_key_expiry: int = 180 * 86400
    extend_by: int = 90 * 86400
    extend_when_left: int = 60 * 86400
    upload: tuple[Upload, ...] = (Upload.VKS,)
    audit: bool = True
    audit_period: int = 86400
    audit_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class GnupgConfig:
    sync: bool = False
    homedir: str = ""


@dataclass(frozen=True)
class ValidationConfig:
    known_keys: tuple[tuple[str, str], ...] = ()
    endorsers: tuple[str, ...] = ()
    consensus: int = 2
    provider_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    perspectives: int = 2


@dataclass(frozen=True)
class MailConfig:
    submission: str = ""
    imap: str = ""
    password_file: str = ""
    sendmail: str = ""
    via_tor: bool = True
    handled: str = "flag"
    answer_timeout: int = 3600


@dataclass(frozen=True)
class ServeConfig:
    keyserver: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """Rotation of the audit log (audit.py): the defaults keep a year of a 10,000-key user,
    about 1.1 million lines of ~350 bytes, near 400 MB in seven 64 MiB files or fewer."""

    rotate_size: int = 64 << 20
    rotate_age: int = 30 * 86400
    keep: int = 400 * 86400


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    tor: TorConfig = field(default_factory=TorConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    own: OwnConfig = field(default_factory=OwnConfig)
    gnupg: GnupgConfig = field(default_factory=GnupgConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    path: Path | None = None

    @property
    def own_key_file(self) -> Path:
        return (
            expand_path(self.own.key_file)
            if self.own.key_file
            else self.daemon.state_dir / "own-key.asc"
        )

    @property
    def database(self) -> Path:
        return self.daemon.state_dir / "refreshd.sqlite3"

    @property
    def audit_file(self) -> Path:
        return self.daemon.state_dir / "audit.jsonl"


# key -> (kind, extra check). Kinds: path, str, bool, duration, size, list, choice, choice-list,
# member-list (a choice-list whose choices are enum members, read as those members).
_SCHEMA: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "daemon": {"state_dir": ("path", ()), "socket": ("path", ())},
    "tor": {
        "mode": ("choice", tuple(TorMode)),
        "socks": ("endpoint", ()),
        "control": ("endpoint", ()),
        "allow_clearnet": ("bool", ()),
    },
    "network": {
        "ca_file": ("str", ()),
        "connect_to": ("connect-list", ()),
        "timeout": ("duration", ()),
        "max_response_bytes": ("size", ()),
        "max_key_bytes": ("size", ()),
    },
    "refresh": {"period": ("duration", ()), "minimum_lapse": ("duration", ())},
    "discovery": {
        "order": ("member-list", SOURCES),
        "vks": ("url-list", ()),
        "hkp": ("url-list", ()),
        "minimum_validation": ("level", LEVELS),
    },
    "own": {
        "key_file": ("str", ()),
        "passphrase_file": ("str", ()),
        "new_key_expiry": ("duration", ()),
        "extend_by": ("duration", ()),
        "extend_when_left": ("duration", ()),
        "upload": ("member-list", UPLOADS),
        "audit": ("bool", ()),
        "audit_period": ("duration", ()),
        "audit_command": ("argv", ()),
    },
    "gnupg": {"sync": ("bool", ()), "homedir": ("str", ())},
    "validation": {
        "known_keys": ("pin-table", ()),
        "endorsers": ("fingerprint-list", ()),
        "consensus": ("count", ()),
        "provider_keys": ("provider-pins", ()),
        "perspectives": ("count", ()),
    },
    "mail": {
        "submission": ("mail-url", ("smtp+starttls", "smtps")),
        "imap": ("mail-url", ("imaps",)),
        "password_file": ("str", ()),
        "sendmail": ("str", ()),
        "via_tor": ("bool", ()),
        "handled": ("str", ()),
        "answer_timeout": ("duration", ()),
    },
    "serve": {"keyserver": ("listen", ())},
    "audit": {
        "rotate_size": ("size", ()),
        "rotate_age": ("duration", ()),
        "keep": ("duration", ()),
    },
}
_SECTIONS = {
    "daemon": DaemonConfig,
    "tor": TorConfig,
    "network": NetworkConfig,
    "refresh": RefreshConfig,
    "discovery": DiscoveryConfig,
    "own": OwnConfig,
    "gnupg": GnupgConfig,
    "validation": ValidationConfig,
    "mail": MailConfig,
    "serve": ServeConfig,
    "audit": AuditConfig,
}
_CONNECT_TO = re.compile(r"^[^:\s]+:\d{1,5}:[^:\s]+:\d{1,5}$")
_ENDPOINT = re.compile(r"^(unix:/\S+|[^:\s]+:\d{1,5})$")
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")
_LISTEN = re.compile(r"^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]):\d{1,5}$")
_MAIL_URL = re.compile(r"^(?P<scheme>[a-z+]+)://(?:[^@/\s]+@)?[^@/:\s]+(?::\d{1,5})?(?:/\S*)?$")


def _fingerprint(name: str, raw: object) -> str:
    """A fingerprint in hex, spaces and a 0x prefix allowed, returned upper-case and compact."""
    if isinstance(raw, str):
        compact = raw.replace(" ", "").upper().removeprefix("0X")
        if _FINGERPRINT.match(compact):
            return compact
    raise ConfigError(f"{name}: expected a 40- or 64-digit hex fingerprint, got {raw!r}")


def _value(section: str, key: str, kind: str, allowed: tuple[str, ...], raw: Any) -> Any:
    name = f"{section}.{key}"

    def want(what: str) -> ConfigError:
        return ConfigError(f"{name}: expected {what}, got {raw!r}")

    match kind:
        case "path":
            if not isinstance(raw, str) or not raw or "\x00" in raw:
                raise want("a non-empty path string")
            try:
                return expand_path(raw)
            except (RuntimeError, ValueError, KeyError) as exc:  # e.g. ~unknownuser
                raise ConfigError(f"{name}: cannot expand {raw!r} ({exc})") from None
        case "str":
            if not isinstance(raw, str):
                raise want("a string")
            return raw
        case "bool":
            if not isinstance(raw, bool):
                raise want("true or false")
            return raw
        case "duration":
            return parse_duration(raw, name)
        case "size":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
                raise want("a positive number of bytes")
            return raw
        case "choice":  # the choices are enum members: the one the word names
            if raw not in allowed:
                raise want("one of " + ", ".join(allowed))
            return next(m for m in allowed if m == raw)
        case "level":
            if raw not in allowed:
                raise want("one of " + ", ".join(allowed))
            return Level(raw)
        case "endpoint":
            if not isinstance(raw, str) or not _ENDPOINT.match(raw):
                raise want('"HOST:PORT" or "unix:/path"')
            return raw
        case "count":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
                raise want("a whole number of at least 1")
            return raw
        case "argv":
            if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
                raise want("a list of non-empty strings (a command and its arguments)")
            return tuple(raw)
        case "fingerprint-list":
            if not isinstance(raw, list):
                raise want("a list of fingerprints")
            return tuple(_fingerprint(name, item) for item in raw)
        case "pin-table":
            if not isinstance(raw, dict):
                raise want('a table of address = "FINGERPRINT"')
            for address in raw:
                if "@" not in address:
                    raise ConfigError(f"{name}: {address!r} is not an email address")
            return tuple(
                (address, _fingerprint(f"{name}.{address}", fpr)) for address, fpr in raw.items()
            )
        case "provider-pins":
            if not isinstance(raw, dict):
                raise want('a table of domain = ["FINGERPRINT", ...]')
            pins = []
            for domain, fprs in raw.items():
                if not isinstance(fprs, list) or not fprs:
                    raise ConfigError(f"{name}.{domain}: expected a non-empty list of fingerprints")
                pins.append(
                    (domain.lower(), tuple(_fingerprint(f"{name}.{domain}", f) for f in fprs))
                )
            return tuple(pins)
        case "listen":
            if not isinstance(raw, str) or (raw and not _LISTEN.match(raw)):
                raise want('"" (off) or a loopback "127.0.0.1:PORT" / "[::1]:PORT"')
            return raw
        case "mail-url":
            if not isinstance(raw, str):
                raise want("a string")
            m = _MAIL_URL.match(raw)
            if raw and (not m or m.group("scheme") not in allowed):
                raise want('"" or a URL with scheme ' + " or ".join(allowed))
            return raw
        case "member-list":  # a choice-list of an enum's words, read as its members
            words = _value(section, key, "choice-list", allowed, raw)
            return tuple(next(m for m in allowed if m == w) for w in words)
        case "choice-list" | "url-list" | "connect-list":
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise want("a list of strings")
            for item in raw:
                if kind == "choice-list" and item not in allowed:
                    raise ConfigError(f"{name}: {item!r} is not one of " + ", ".join(allowed))
                if kind == "url-list" and not re.match(r"^(https?|hkps?)://[^/\s]+", item):
                    raise ConfigError(f"{name}: {item!r} is not an http(s) or hkp(s) URL")
                if kind == "connect-list" and not _CONNECT_TO.match(item):
                    raise ConfigError(
                        f"{name}: {item!r} is not HOST:PORT:CONNECT_HOST:CONNECT_PORT"
                    )
            return tuple(raw)
    raise AssertionError(kind)


def from_mapping(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML mapping into a Config; every problem names its key."""
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(_SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}]: expected a table")
        values = {}
        for key, raw in body.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(
                    f"{section}.{key}: unknown key (known in [{section}]: "
                    + ", ".join(_SCHEMA[section])
                    + ")"
                )
            kind, allowed = _SCHEMA[section][key]
            values[key] = _value(section, key, kind, allowed, raw)
        sections[section] = _SECTIONS[section](**values)
    cfg = Config(**sections, path=path)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    if cfg.tor.mode is TorMode.OFF and not cfg.tor.allow_clearnet:
        raise ConfigError(
            'tor.mode: "off" sends requests without Tor; it is refused unless '
            "tor.allow_clearnet = true (for tests and diagnostics only)"
        )
    if cfg.refresh.period <= 0:
        raise ConfigError("refresh.period: must be longer than 0s")
    if cfg.own.extend_by <= 0 or cfg.own.new_key_expiry <= 0:
        raise ConfigError("own.extend_by / own.new_key_expiry: must be longer than 0s")
    if cfg.network.max_key_bytes > cfg.network.max_response_bytes:
        raise ConfigError("network.max_key_bytes: cannot exceed network.max_response_bytes")


def locate(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The config file to read, or None for the embedded defaults."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("REFRESHD_CONFIG"):
        return Path(os.environ["REFRESHD_CONFIG"]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidate = Path(xdg) / "refreshd" / "config.toml"
    return candidate if candidate.exists() else None


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = locate(explicit)
    if path is None:
        return Config()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return from_mapping(data, path)
