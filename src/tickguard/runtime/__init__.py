"""The real TICK servers for tests, local mode and benchmarks: find the binaries, run influxd + kapacitord.

Main entry point: `TickRuntime` (see tickguard.runtime.harness). The binaries come from `make tick`
(scripts/build-tick.sh) into <repo>/.tick/bin, or from $TICKGUARD_TICK_BIN, or PATH.
"""

from tickguard.runtime.binaries import TickBinaries, binary_version, find_tick_binaries
from tickguard.runtime.config import INFLUXDB_VERSION, KAPACITOR_VERSION, RuntimeSettings, load_settings
from tickguard.runtime.harness import TickRuntime
from tickguard.runtime.influxdb import InfluxAuth, InfluxServer
from tickguard.runtime.kapacitor import KapacitorServer, SocketUdf
from tickguard.runtime.process import ManagedServer, TickRuntimeError, free_port

__all__ = [
    "INFLUXDB_VERSION",
    "KAPACITOR_VERSION",
    "InfluxAuth",
    "InfluxServer",
    "KapacitorServer",
    "ManagedServer",
    "RuntimeSettings",
    "SocketUdf",
    "TickBinaries",
    "TickRuntime",
    "TickRuntimeError",
    "binary_version",
    "find_tick_binaries",
    "free_port",
    "load_settings",
]
