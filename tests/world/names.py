"""The test world's names: domains that exist nowhere but in Tor's MapAddress and our certs.

Every web name is served by nginx (WKD both layouts, nicknym capability files); the nicknym
API and HKP names point at their own servers. None of these names may ever reach a resolver.
"""

from __future__ import annotations

WKD_DOMAINS = ("example.org", "example.net", "example.com")
NICKNYM_DOMAIN = "example.com"
NICKNYM_HOST = "nicknym.example.com"
HKP_HOSTS = ("hkp.example.net", "keys.example.net")
MAIL_HOST = "mail.example.org"  # the provider's submission, MX and IMAP doors (tests/world/mail.py)


def web_hosts() -> tuple[str, ...]:
    """Host names nginx answers for: each domain and its `openpgpkey.` subdomain."""
    return tuple(host for d in WKD_DOMAINS for host in (d, f"openpgpkey.{d}"))


def all_names() -> tuple[str, ...]:
    """Every test name the Tor client maps."""
    return (*web_hosts(), NICKNYM_HOST, *HKP_HOSTS, MAIL_HOST)
