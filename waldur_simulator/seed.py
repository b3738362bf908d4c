"""Seed data: a small believable world for the demo, and a large one for benchmarks."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from .state import SimulatorState


def demo_password(username: str) -> str:
    return f"{username}-password"


def seed_demo(sim: SimulatorState) -> dict[str, dict[str, str]]:
    """Two organizations, four projects, six users with mixed roles, orders and resources.

    Changes go through the control API, so the events (and hooks) are those Waldur would log.
    Returns the uuids by short name: {"customers": {...}, "projects": {...}, "users": {...}}.
    """
    customers = {
        "northwind": sim.add_customer("Northwind Research", "NWR"),
        "helix": sim.add_customer("Helix Labs", "HLX"),
    }
    projects = {
        "telescope": sim.add_project(
            customers["northwind"], "Telescope Pipeline", "Nightly reduction of survey images"
        ),
        "climate": sim.add_project(
            customers["northwind"], "Climate Models", "Regional downscaling runs"
        ),
        "genome": sim.add_project(customers["helix"], "Genome Assembly", "Long-read assembly"),
        "protein": sim.add_project(customers["helix"], "Protein Folding", "Structure screening"),
    }
    people = {
        "alice": ("Alice Archer", "alice@northwind.example"),
        "bob": ("Bob Baker", "bob@northwind.example"),
        "carol": ("Carol Chen", "carol@northwind.example"),
        "dave": ("Dave Dawson", "dave@helix.example"),
        "erin": ("Erin Evans", "erin@helix.example"),
        "frank": ("Frank Fischer", "frank@helix.example"),
    }
    users = {name: sim.add_user(name, full, email) for name, (full, email) in people.items()}
    # Everyone can sign in with a password (the sign-in page of the demo): <name>-password.
    for name, uuid in users.items():
        sim.set_password(uuid, demo_password(name))

    sim.grant(users["alice"], customers["northwind"], "CUSTOMER.OWNER")
    sim.grant(users["bob"], projects["telescope"], "PROJECT.ADMIN")
    sim.grant(users["carol"], projects["telescope"], "PROJECT.MEMBER")
    sim.grant(users["carol"], projects["climate"], "PROJECT.MANAGER")
    sim.grant(users["bob"], projects["climate"], "PROJECT.MEMBER")
    sim.grant(users["dave"], projects["genome"], "PROJECT.ADMIN")
    sim.grant(users["dave"], projects["protein"], "PROJECT.ADMIN")
    sim.grant(users["frank"], projects["protein"], "PROJECT.MEMBER")
    sim.grant(users["frank"], customers["helix"], "CUSTOMER.MANAGER")
    # A guest whose access ends in two days: the bridge should remove her then.
    sim.grant(
        users["erin"],
        projects["genome"],
        "PROJECT.MEMBER",
        expiration_time=sim.now() + timedelta(days=2),
    )

    sim.add_order(
        projects["telescope"],
        "Create",
        "done",
        resource_name="ingest-vm",
        offering_name="Cloud VM",
        created_by=users["bob"],
    )
    sim.add_order(
        projects["telescope"],
        "Create",
        "erred",
        resource_name="gpu-batch",
        offering_name="GPU Cluster",
        created_by=users["carol"],
        error_message="Quota exceeded for GPU nodes.",
    )
    sim.add_order(
        projects["telescope"],
        "Create",
        "pending-consumer",
        resource_name="archive-bucket",
        offering_name="Object Storage",
        created_by=users["carol"],
    )
    sim.add_order(
        projects["climate"],
        "Create",
        "executing",
        resource_name="hpc-allocation",
        offering_name="HPC Allocation",
        created_by=users["carol"],
    )
    sim.add_order(
        projects["genome"],
        "Create",
        "pending-provider",
        resource_name="seq-storage",
        offering_name="Object Storage",
        created_by=users["dave"],
    )
    sim.add_order(
        projects["genome"],
        "Create",
        "done",
        resource_name="assembly-vm",
        offering_name="Cloud VM",
        created_by=users["dave"],
    )
    sim.add_resource(projects["protein"], "fold-gpu", "OK", offering_name="GPU Cluster")
    return {"customers": customers, "projects": projects, "users": users}


_PROJECT_ROLES = ("PROJECT.ADMIN", "PROJECT.MANAGER", "PROJECT.MEMBER")


def seed_bulk(
    sim: SimulatorState,
    projects: int = 1000,
    grants: int = 10_000,
    *,
    users: int | None = None,
    customers: int | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """A large world built directly, without events: `grants` active grants over `projects`.

    One CUSTOMER.OWNER per organization counts towards `grants`; the rest are project roles.
    """
    rng = random.Random(seed)
    n_customers = customers or max(1, projects // 20)
    n_users = users or max(10, grants // 5)
    with sim.quiet():
        customer_ids = [sim.add_customer(f"Org {i:04d}", f"O{i:04d}") for i in range(n_customers)]
        project_ids = [
            sim.add_project(customer_ids[i % n_customers], f"Project {i:05d}")
            for i in range(projects)
        ]
        user_ids = [sim.add_user(f"user{i:05d}", f"User {i:05d}") for i in range(n_users)]
        role_of = {name: sim.role(name) for name in (*_PROJECT_ROLES, "CUSTOMER.OWNER")}
        seen: set[tuple[str, str, str]] = set()
        made = 0
        for i, customer in enumerate(customer_ids):
            if made >= grants:
                break
            user = user_ids[i % n_users]
            seen.add((user, customer, "CUSTOMER.OWNER"))
            sim._add_grant(
                sim.users[user], sim.customers[customer], role_of["CUSTOMER.OWNER"], None
            )
            made += 1
        attempts = 0
        while made < grants and attempts < grants * 10:
            attempts += 1
            key = (rng.choice(user_ids), rng.choice(project_ids), rng.choice(_PROJECT_ROLES))
            if key in seen:
                continue
            seen.add(key)
            sim._add_grant(sim.users[key[0]], sim.projects[key[1]], role_of[key[2]], None)
            made += 1
    return {
        "customers": customer_ids,
        "projects": project_ids,
        "users": user_ids,
        "grants": made,
    }
