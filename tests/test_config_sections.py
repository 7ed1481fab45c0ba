"""The second-round config sections ([validation], [mail], [serve], own.audit*): strict values."""

from __future__ import annotations

import pytest

from refreshd import config

FPR = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"


def test_pins_and_endorsers_are_normalised_fingerprints() -> None:
    cfg = config.from_mapping(
        {
            "validation": {
                "known_keys": {"bob@example.org": "0x" + FPR.lower()},
                "endorsers": [" ".join(FPR[i : i + 4] for i in range(0, 40, 4))],
                "provider_keys": {"Example.ORG": [FPR]},
                "consensus": 3,
            }
        }
    )
    assert cfg.validation.known_keys == (("bob@example.org", FPR),)
    assert cfg.validation.endorsers == (FPR,)
    assert cfg.validation.provider_keys == (("example.org", (FPR,)),)
    assert cfg.validation.consensus == 3


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("validation", "known_keys", {"bob@example.org": "1234"}, "validation.known_keys"),
        ("validation", "known_keys", {"not-an-address": FPR}, "validation.known_keys"),
        ("validation", "known_keys", [FPR], "validation.known_keys"),
        ("validation", "endorsers", ["zz"], "validation.endorsers"),
        ("validation", "consensus", 0, "validation.consensus"),
        ("validation", "perspectives", True, "validation.perspectives"),
        ("validation", "provider_keys", {"example.org": []}, "validation.provider_keys"),
        ("mail", "submission", "http://mail.example.org", "mail.submission"),
        ("mail", "imap", "imap://u@mail.example.org:143", "mail.imap"),
        ("mail", "via_tor", "yes", "mail.via_tor"),
        ("serve", "keyserver", "0.0.0.0:11371", "serve.keyserver"),
        ("serve", "keyserver", "192.168.1.2:11371", "serve.keyserver"),
        ("own", "audit_command", "notify-send", "own.audit_command"),
        ("own", "audit_command", ["notify-send", ""], "own.audit_command"),
        ("own", "audit_period", "often", "own.audit_period"),
    ],
)
def test_bad_values_name_their_key(section: str, key: str, value: object, named: str) -> None:
    with pytest.raises(config.ConfigError, match=named.replace(".", r"\.")):
        config.from_mapping({section: {key: value}})


def test_good_mail_and_serve_values() -> None:
    cfg = config.from_mapping(
        {
            "mail": {
                "submission": "smtp+starttls://alice@mail.example.org:587",
                "imap": "imaps://alice@mail.example.org:993/INBOX",
            },
            "serve": {"keyserver": "127.0.0.1:11371"},
            "own": {"upload": ["kpp", "wks"], "audit_command": ["notify-send", "x"]},
            "discovery": {"order": ["wkd", "smtp"]},
        }
    )
    assert cfg.serve.keyserver == "127.0.0.1:11371"
    assert cfg.own.audit_command == ("notify-send", "x")
    assert cfg.discovery.order == ("wkd", "smtp")


def test_smtp_retrieval_is_off_by_default() -> None:
    assert "smtp" not in config.Config().discovery.order
