"""config.example.toml documents every key with exactly the embedded default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from refreshd import config
from tests.conftest import config_sections

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
SPEC = ROOT.parent / "shared" / "SPEC.md"


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_yields_exactly_the_defaults() -> None:
    parsed, defaults = config.from_mapping(example()), config.Config()
    for section in dataclasses.fields(config.Config):
        if section.name == "path":
            continue
        got, want = getattr(parsed, section.name), getattr(defaults, section.name)
        for key in dataclasses.fields(want):
            assert getattr(got, key.name) == getattr(want, key.name), f"{section.name}.{key.name}"
    assert dataclasses.replace(parsed, path=None) == defaults


def test_example_names_every_key_in_the_order_of_the_code() -> None:
    data = example()
    assert {section: list(keys) for section, keys in data.items()} == config_sections()


def test_every_key_has_a_comment_right_above_it() -> None:
    previous = ""
    for line in EXAMPLE.read_text().splitlines():
        if re.match(r"^\w+ = ", line):
            assert previous.startswith("# "), f"no explanation above: {line}"
        if line.strip():
            previous = line


# Defaults the project chose differently from SPEC section 3, each where the SPEC allows it,
# with the reason; every other key must have SPEC's value.
DEVIATIONS: dict[tuple[str, str], tuple[object, str]] = {
    ("refresh", "minimum_lapse"): (
        "30s",
        "SPEC 3 lets the project lower it with its privacy argument: every fetch has its own "
        "circuit, so only the rate is bounded (core/schedule.py, docs/parcimonie.md)",
    ),
}


# Keys the example has beyond SPEC section 3's block, each with the reason it exists.
EXTRAS: dict[tuple[str, str], str] = {
    ("mail", "handled"): "what the mail channel does with an answer it handled (IMAP flag or "
    "folder): a mailbox is the user's, refreshd must say what it touches",
    ("mail", "answer_timeout"): "how long a WKS/KPP/KRP exchange waits for its answer",
    ("audit", "rotate_size"): "issue 14 asks for configurable rotation of the audit log",
    ("audit", "rotate_age"): "issue 14 asks for configurable rotation of the audit log",
    ("audit", "keep"): "issue 14: retention keeps a year of a 10,000-key user in a few hundred MB",
}


@pytest.mark.skipif(not SPEC.exists(), reason="the shared SPEC is not beside the checkout")
def test_example_matches_the_spec_config_block() -> None:
    """SPEC section 3 spells the defaults out; the example must not drift from it, except for
    the deviations listed above (each still present, with the value listed)."""
    block = re.search(r"## 3\. Config.*?```toml\n(.*?)```", SPEC.read_text(), re.S)
    assert block, "SPEC section 3 has a toml block"
    spec, ours = tomllib.loads(block.group(1)), example()
    for section, keys in spec.items():  # every SPEC key is there, in SPEC's order
        assert [k for k in ours.get(section, {}) if (section, k) not in EXTRAS] == list(keys)
    extra = {(s, k) for s, keys in ours.items() for k in keys if k not in spec.get(s, {})}
    assert extra == set(EXTRAS), "every key beyond SPEC's is listed in EXTRAS with its reason"
    for section, keys in spec.items():
        for key, value in keys.items():
            deviation = DEVIATIONS.get((section, key))
            want = value if deviation is None else deviation[0]
            assert ours[section][key] == want, f"{section}.{key}"
    for section, key in DEVIATIONS:
        assert spec[section][key] != DEVIATIONS[section, key][0], "no longer a deviation"
