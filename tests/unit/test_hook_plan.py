"""The bridge's own web hooks in Waldur: found by the path and secret, moved in place when the
address changes, further copies deleted, everybody else's left alone."""

from __future__ import annotations

from waldur_bridge.waldur.hook_plan import plan_hooks, shown_origin
from waldur_bridge.waldur.records import WebHook

SECRET = "s3cr3t-0123456789"
TYPES = ("role_granted", "role_revoked")
NEW = f"https://bridge-new.example.org/waldur/webhook/{SECRET}"
OLD = f"http://bridge-old.internal:29334/waldur/webhook/{SECRET}"


def hook(n: int, url: str, *, active: bool = True, types: tuple[str, ...] = TYPES) -> WebHook:
    return WebHook(uuid=f"{n:032x}", destination_url=url, event_types=types, is_active=active)


def test_no_hook_of_ours_is_created() -> None:
    others = [hook(1, "https://elsewhere.example.org/hooks/x"), hook(2, OLD.replace(SECRET, "x"))]
    assert plan_hooks(others, NEW, TYPES).create


def test_the_right_hook_is_kept_and_further_copies_are_stale() -> None:
    right, copy = hook(1, NEW), hook(2, OLD)
    plan = plan_hooks([copy, right], NEW, TYPES)
    assert plan.keep == right and plan.update is None and not plan.create
    assert plan.stale == (copy,)


def test_a_changed_address_moves_the_hook_in_place() -> None:
    old, older = hook(1, OLD), hook(2, OLD.replace("bridge-old", "bridge-older"), active=False)
    foreign = hook(3, "https://elsewhere.example.org/waldur/webhook/other-secret")
    plan = plan_hooks([foreign, older, old], NEW, TYPES)
    assert plan.update == old  # the active one is moved; the others are deleted
    assert plan.stale == (older,)
    assert foreign not in plan.stale


def test_wrong_types_or_inactive_are_updated() -> None:
    assert plan_hooks([hook(1, NEW, types=("role_granted",))], NEW, TYPES).update is not None
    assert plan_hooks([hook(1, NEW, active=False)], NEW, TYPES).update is not None


def test_log_lines_show_only_the_origin() -> None:
    assert shown_origin(NEW) == "https://bridge-new.example.org"
    assert SECRET not in shown_origin(OLD)
