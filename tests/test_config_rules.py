"""Config lookup order, durations, and bad input that must name its key (SPEC section 3)."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd import config
from refreshd.config import ConfigError
from tests.conftest import config_sections

DAY = 86400


# --- lookup order: --config, then $REFRESHD_CONFIG, then $XDG_CONFIG_HOME ---


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Three config files that differ in refresh.period (1d, 2d, 3d) and a home without one."""
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    (xdg / "refreshd").mkdir(parents=True)
    home.mkdir()
    files = {
        "explicit": tmp_path / "explicit.toml",
        "env": tmp_path / "env.toml",
        "xdg": xdg / "refreshd" / "config.toml",
    }
    for days, path in enumerate(files.values(), start=1):
        path.write_text(f'[refresh]\nperiod = "{days}d"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("REFRESHD_CONFIG", str(files["env"]))
    return files | {"home": home}


def period_days(explicit: Path | None = None) -> float:
    return config.load(explicit).refresh.period / DAY


def test_explicit_config_wins(places: dict[str, Path]) -> None:
    assert period_days(places["explicit"]) == 1
    assert config.load(places["explicit"]).path == places["explicit"]


def test_environment_comes_second(places: dict[str, Path]) -> None:
    assert period_days() == 2


def test_xdg_config_home_comes_third(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REFRESHD_CONFIG")
    assert period_days() == 3


def test_without_xdg_config_home_the_home_config_is_read(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REFRESHD_CONFIG")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config.load() == config.Config(), "no file anywhere: embedded defaults"
    home_config = places["home"] / ".config" / "refreshd" / "config.toml"
    home_config.parent.mkdir(parents=True)
    home_config.write_text('[refresh]\nperiod = "4d"\n')
    assert period_days() == 4


@pytest.mark.parametrize("how", ["explicit", "env"])
def test_a_named_config_that_is_missing_is_an_error(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A file the user named but that is not there never silently means the defaults."""
    missing = places["home"] / "missing.toml"
    monkeypatch.setenv("REFRESHD_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        config.load(missing if how == "explicit" else None)


@pytest.mark.parametrize("body", [b"[refresh\n", b"period = \n", b"\xff\xfe[daemon]\n"])
def test_unreadable_toml_names_the_file(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(body)
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        config.load(path)


# --- durations ---


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600s", 600),
        ("10m", 600),
        ("12h", 12 * 3600),
        ("7d", 7 * DAY),
        ("2w", 14 * DAY),
        ("6mo", 180 * DAY),
        ("1y", 365 * DAY),
        ("90", 90),
        (" 10m ", 600),
        (0, 0),
        (3600, 3600),
    ],
)
def test_durations_parse(text: str | int, seconds: int) -> None:
    assert config.parse_duration(text) == seconds


UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY, "mo": 30 * DAY, "y": 365 * DAY}


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(UNITS)))
def test_any_count_of_any_unit(count: int, unit: str) -> None:
    assert config.parse_duration(f"{count}{unit}") == count * UNITS[unit]


@pytest.mark.parametrize(
    "value", ["7x", "", "m", "-5m", "1.5d", "10 minutes", "7d2h", -1, 1.5, True, None, [], {}]
)
def test_bad_durations_name_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^refresh\.minimum_lapse: "):
        config.from_mapping({"refresh": {"minimum_lapse": value}})


# --- bad input names its key ---

BAD = [
    ({"gossip": {}}, "[gossip]"),
    ({"daemon": {"pidfile": "/run/x"}}, "daemon.pidfile"),
    ({"daemon": "not a table"}, "[daemon]"),
    ({"daemon": {"state_dir": 5}}, "daemon.state_dir"),
    ({"daemon": {"socket": ""}}, "daemon.socket"),
    ({"tor": {"mode": "on"}}, "tor.mode"),
    ({"tor": {"mode": "off"}}, "tor.mode"),
    ({"tor": {"mode": "off", "allow_clearnet": "yes"}}, "tor.allow_clearnet"),
    ({"tor": {"socks": "9050"}}, "tor.socks"),
    ({"tor": {"control": "unix:relative/path"}}, "tor.control"),
    ({"network": {"ca_file": 1}}, "network.ca_file"),
    ({"network": {"connect_to": "a:1:b:2"}}, "network.connect_to"),
    ({"network": {"connect_to": ["example.org:443:127.0.0.1"]}}, "network.connect_to"),
    ({"network": {"connect_to": ["example.org:https:127.0.0.1:8443"]}}, "network.connect_to"),
    ({"network": {"connect_to": [443]}}, "network.connect_to"),
    ({"network": {"timeout": "2 minutes"}}, "network.timeout"),
    ({"network": {"max_response_bytes": 0}}, "network.max_response_bytes"),
    ({"network": {"max_key_bytes": -1}}, "network.max_key_bytes"),
    ({"network": {"max_key_bytes": "1MiB"}}, "network.max_key_bytes"),
    ({"network": {"max_key_bytes": True}}, "network.max_key_bytes"),
    ({"network": {"max_response_bytes": 1000, "max_key_bytes": 2000}}, "network.max_key_bytes"),
    ({"refresh": {"period": "0s"}}, "refresh.period"),
    ({"refresh": {"period": -7}}, "refresh.period"),
    ({"discovery": {"order": ["wkd", "dns"]}}, "discovery.order"),
    ({"discovery": {"order": "wkd"}}, "discovery.order"),
    ({"discovery": {"vks": ["keys.openpgp.org"]}}, "discovery.vks"),
    ({"discovery": {"hkp": ["ftp://keys.example.org"]}}, "discovery.hkp"),
    ({"discovery": {"minimum_validation": "high"}}, "discovery.minimum_validation"),
    ({"own": {"key_file": ["a"]}}, "own.key_file"),
    ({"own": {"extend_by": "0d"}}, "own.extend_by"),
    ({"own": {"new_key_expiry": "6 months"}}, "own.new_key_expiry"),
    ({"own": {"upload": ["email"]}}, "own.upload"),
    ({"gnupg": {"sync": 1}}, "gnupg.sync"),
    ({"gnupg": {"homedir": False}}, "gnupg.homedir"),
]


@pytest.mark.parametrize(("data", "key"), BAD, ids=[key for _, key in BAD])
def test_bad_input_names_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(data)
    assert key in str(caught.value)


def test_good_values_are_taken() -> None:
    cfg = config.from_mapping(
        {
            "tor": {"mode": "off", "allow_clearnet": True, "socks": "unix:/run/tor/socks"},
            "network": {"connect_to": ["openpgpkey.example.org:443:127.0.0.1:8443"]},
            "refresh": {"period": "1d", "minimum_lapse": 30},
            "discovery": {"order": ["wkd"], "hkp": ["hkps://keys.example.org"]},
            "own": {"upload": ["wks", "nicknym"]},
        }
    )
    assert (cfg.tor.mode, cfg.tor.allow_clearnet, cfg.tor.socks) == (
        "off",
        True,
        "unix:/run/tor/socks",
    )
    assert cfg.network.connect_to == ("openpgpkey.example.org:443:127.0.0.1:8443",)
    assert (cfg.refresh.period, cfg.refresh.minimum_lapse) == (DAY, 30)
    assert cfg.discovery.order == ("wkd",)
    assert cfg.own.upload == ("wks", "nicknym")


def test_paths_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    cfg = config.from_mapping(
        {"daemon": {"state_dir": "~/state", "socket": "$XDG_RUNTIME_DIR/rd/socket"}}
    )
    assert cfg.daemon.state_dir == tmp_path / "state"
    assert cfg.daemon.socket == Path("/run/user/4242/rd/socket")


# --- arbitrary input: ConfigError or a Config, nothing else ---

toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.datetimes()
    | st.dates()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
KNOWN = config_sections()
known_values = st.one_of(
    toml_values,
    st.sampled_from(["auto", "off", "10m", "7x", "unix:/x", "a:1:b:2", "https://x", "~", "$X"]),
    st.lists(st.sampled_from(["vks", "wkd", "hkp", "nicknym", "a:1:b:2", "https://k", ""])),
)


@st.composite
def mappings(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly known sections and keys, so the checks behind the name lookup get exercised."""
    data: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*KNOWN, "extra"]), max_size=4, unique=True)):
        names = [*KNOWN.get(section, []), "bogus"]
        keys = draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
        data[section] = {key: draw(known_values) for key in keys}
    return data


def _config_or_config_error(data: dict[str, Any]) -> None:
    try:
        cfg = config.from_mapping(data)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(cfg, config.Config)


@pytest.mark.parametrize("path", ["~no-such-user-here/state", "~\x00", "/tmp/a\x00b"])
def test_unusable_paths_are_config_errors(path: str) -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.state_dir: "):
        config.from_mapping({"daemon": {"state_dir": path}})


@given(st.dictionaries(st.text(max_size=12), toml_values, max_size=4))
def test_arbitrary_mappings_only_raise_config_error(data: dict[str, Any]) -> None:
    _config_or_config_error(data)


def test_strategy_values_are_toml() -> None:
    """The strategies stay within what tomllib can hand over."""
    parsed = tomllib.loads("a = 1979-05-27T07:32:00\nb = 1979-05-27\nc = 07:32:00\nd = nan\n")
    assert [type(v) for v in parsed.values()] == [dt.datetime, dt.date, dt.time, float]
