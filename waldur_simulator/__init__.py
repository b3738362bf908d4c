"""A Waldur simulator: the subset of Waldur's REST API the bridge uses, for tests and the demo.

sim = WaldurSimulator(generation="7.0")
await sim.start()
org = sim.add_customer("Acme")
...
"""

from __future__ import annotations

from .faults import FaultRule, Faults
from .seed import seed_bulk, seed_demo
from .server import RequestRecord, WaldurSimulator

__all__ = ["FaultRule", "Faults", "RequestRecord", "WaldurSimulator", "seed_bulk", "seed_demo"]
