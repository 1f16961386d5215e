"""Hardware models the simulator knows: vendor, model, firmware, power, connectors.

A scenario refers to a model by its key (``"voltix-dc150"``); a scenario may
add its own models in ``[models.<key>]`` tables. The vendors are fictional but
the figures are those of real products of each class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConnectorType = Literal["Type2", "CCS2", "CHAdeMO"]


@dataclass(frozen=True, slots=True)
class HardwareModel:
    """One charge point model. ``rated_power_w`` is the whole unit's, ``connector_power_w`` each outlet's."""

    key: str
    vendor: str
    model: str
    firmware: str
    rated_power_w: float
    connectors: tuple[ConnectorType, ...]
    connector_power_w: float
    dc: bool
    psu_modules: int = 0
    ocpp: Literal["1.6", "2.0.1"] = "1.6"

    @property
    def current_type(self) -> str:
        return "DC" if self.dc else "AC"


BUILTIN_MODELS: dict[str, HardwareModel] = {
    m.key: m
    for m in (
        HardwareModel(
            "ampero-ac11", "Ampero", "AW-11", "2.8.4", 11_000, ("Type2",), 11_000, dc=False
        ),
        HardwareModel(
            "ampero-ac22",
            "Ampero",
            "AC22-Duo",
            "3.4.1",
            44_000,
            ("Type2", "Type2"),
            22_000,
            dc=False,
        ),
        HardwareModel(
            "voltix-dc50",
            "Voltix",
            "VX-DC50",
            "2.1.0",
            50_000,
            ("CCS2", "CHAdeMO"),
            50_000,
            dc=True,
            psu_modules=2,
        ),
        HardwareModel(
            "voltix-dc150",
            "Voltix",
            "VX-DC150",
            "5.2.3",
            150_000,
            ("CCS2", "CCS2"),
            150_000,
            dc=True,
            psu_modules=6,
            ocpp="2.0.1",
        ),
        HardwareModel(
            "helion-dc300",
            "Helion",
            "HPC-300",
            "1.9.7",
            300_000,
            ("CCS2", "CCS2"),
            300_000,
            dc=True,
            psu_modules=10,
            ocpp="2.0.1",
        ),
    )
}
