"""EC2's vCPUs and memory of the instance types this project suggests.

One table for the two readers: the Airflow side's capacity check (can the cluster place the
train step's workers?) and `llm-decoder estimate` (hours and memory per node at scale).
"""

from __future__ import annotations

from typing import NamedTuple


class Instance(NamedTuple):
    vcpus: int
    memory_gib: int


INSTANCE_TYPES: dict[str, Instance] = {
    **{f"{family}.xlarge": Instance(4, 16) for family in ("m5", "m6i", "m7i", "g4dn", "g5")},
    **{f"{family}.2xlarge": Instance(8, 32) for family in ("m5", "m6i", "m7i", "g4dn", "g5")},
    **{f"{family}.4xlarge": Instance(16, 64) for family in ("m5", "m6i", "m7i", "g4dn", "g5")},
    "r5.xlarge": Instance(4, 32),
    "r5.2xlarge": Instance(8, 64),
    "r5.4xlarge": Instance(16, 128),
    "c5.xlarge": Instance(4, 8),
    "c5.2xlarge": Instance(8, 16),
    "c5.4xlarge": Instance(16, 32),
}
