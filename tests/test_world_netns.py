"""Where network namespaces cannot be made, the tests that need one skip with a reason saying
why (tests/world/netns.py `refused`), instead of failing; no namespace is needed here."""

from __future__ import annotations

import pytest

from tests.world import netns


def test_no_ip_command_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "IP", "/nonexistent/ip")
    assert "iproute2" in (netns.refused() or "")


def test_a_refused_netns_add_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "IP", "false")  # exits 1, as `ip netns add` without privilege
    assert "ip netns add is refused" in (netns.refused() or "")
