"""`health.HealthResponder.answer`: which requests the sidecar answers itself, without a network."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from queueproxy.health import HEALTH_CHECK_AGENTS, HealthResponder


class _Drain:
    draining = False

    def __init__(self) -> None:
        self.touched = 0

    def touch(self) -> None:
        self.touched += 1


def _answer(agent: bytes) -> tuple[bool, int, int]:
    """(answered, app probes started, drain touches) for a request with this User-Agent."""
    probes: list[int] = []

    def probe_app() -> asyncio.Future[bool]:
        probes.append(1)
        return SimpleNamespace(add_done_callback=lambda callback: None)  # type: ignore[return-value]

    drain = _Drain()
    responder = HealthResponder(probe_app, drain)
    exchange = SimpleNamespace(user_agent=agent, network_probe=b"queue", knative_fields=None)
    answered = responder.answer(SimpleNamespace(), exchange)  # type: ignore[arg-type]
    return answered, len(probes), drain.touched


@pytest.mark.parametrize(
    "agent",
    [
        *HEALTH_CHECK_AGENTS,
        b"kube-probe/1.29",
        b"Knative-Activator-Probe/x",
        b"Knative-Autoscaling-Probe ",
    ],
)
def test_health_check_agents_by_prefix(agent: bytes) -> None:
    assert _answer(agent) == (True, 1, 0)


@pytest.mark.parametrize(
    "agent",
    [b"", b"k", b"K", b"kube-probe", b"Kube-probe/1.29", b"knative-activator-probe",
     b" kube-probe/1", b"curl/8.5", b"Knative-Activator", b"\xffkube-probe/"],
)  # fmt: skip
def test_other_agents_are_requests_and_touch_the_drain(agent: bytes) -> None:
    """Knative's `IsKubeletProbe`/`IsActivatorProbe`-style prefix tests are case-sensitive."""
    answered, probes, touched = _answer(agent)
    assert (answered, probes, touched) == (False, 0, 1)
