"""What a Waldur event asks the bridge to look at again: live 7.0.7 samples, and the simulator's
organization update."""

from __future__ import annotations

import json
import re
from pathlib import Path

from waldur_bridge.sync.changes import (
    CUSTOMER_EVENTS,
    PROJECT_EVENTS,
    ROLE_EVENTS,
    WEBHOOK_EVENTS,
    hint_from_event,
)
from waldur_bridge.waldur import Event
from waldur_bridge.waldur.records import normalize_uuid
from waldur_simulator.serializers import Serializer
from waldur_simulator.state import SimulatorState

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = json.loads((ROOT / "tests/fixtures/waldur-7.0-live-samples.json").read_text())["samples"]


def live_events(sample: str) -> list[Event]:
    return [Event.from_api(item) for item in SAMPLES[sample]["response"]]


def test_a_project_event_names_only_its_project() -> None:
    """Waldur puts the project's organization into a project event's context; the project alone
    needs a look (before, every project of the organization was reconciled again)."""
    events = [e for e in live_events("events_project_deletion") if e.event_type in PROJECT_EVENTS]
    assert {e.event_type for e in events} >= {
        "project_creation_succeeded",
        "project_update_succeeded",
        "project_deletion_succeeded",
    }
    for event in events:
        assert event.customer_uuids(), "the live context names the organization"
        hint = hint_from_event(event)
        assert hint.project_uuids == set(event.project_uuids()) and hint.project_uuids
        assert not hint.customer_uuids


def test_an_organization_role_still_names_its_organization() -> None:
    events = [e for e in live_events("events_roles") if e.event_type in ROLE_EVENTS]
    by_organization = [e for e in events if not e.project_uuids()]
    assert by_organization, "the samples hold an organization-scope grant"
    for event in by_organization:
        assert hint_from_event(event).customer_uuids == set(event.customer_uuids())


def test_an_organization_update_names_the_organization() -> None:
    state = SimulatorState()
    org = state.add_customer("Acme")
    state.rename_customer(org, name="Acme Research")
    state.rename_customer(org, name="Acme Research")  # nothing changed: no event
    updates = [e for e in state.events if e.event_type == "customer_update_succeeded"]
    assert len(updates) == 1
    event = Event.from_api(Serializer.event(updates[0]))
    assert event.event_type in CUSTOMER_EVENTS
    hint = hint_from_event(event)
    assert hint.customer_uuids == {normalize_uuid(org)}
    assert not hint.project_uuids


def test_the_readme_hook_lists_exactly_the_types_the_bridge_acts_on() -> None:
    """Operators who create the hook by hand copy README's curl: it must not drift."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split('"event_types": [', 1)[1].split("]", 1)[0]
    assert set(re.findall(r'"([a-z_]+)"', body)) == set(WEBHOOK_EVENTS)
