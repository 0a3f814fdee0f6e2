"""Which parts of the agent one `spo agent` process runs (`--role`), pure.

Under `spo up` one host process runs everything (`all`). In the spod DaemonSet each container runs one
part, so that `kubectl logs -c log-enricher` shows the log enricher's lines and `-c json-enricher` the
JSON enricher's records (docs 7.8.7, 7.9), and each container holds only the privileges its part needs:
- `profiles`: profile files, this node's statuses and finalizers, the heartbeat Lease;
- `log-enricher`: the audit pipeline producing the log enricher's lines, the audit counters and
  recordings from logs (which follow the log enricher's switch);
- `json-enricher`: the audit pipeline producing the JSON enricher's records.
Every role serves its own metrics and /healthz on its own `--metrics-port`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.audit import ALL_OUTPUTS, Output
from api import constants


@dataclass(frozen=True)
class Parts:
    """What one agent process runs."""

    profiles: bool  # profile handlers, node statuses and finalizers, heartbeat
    outputs: frozenset[Output]  # what its audit pipeline may produce; none: no pipeline

    @property
    def recorder(self) -> bool:
        return Output.LOG_ENRICHER in self.outputs


ROLES: Final[dict[str, Parts]] = {
    constants.AGENT_ROLE_ALL: Parts(profiles=True, outputs=ALL_OUTPUTS),
    constants.AGENT_ROLE_PROFILES: Parts(profiles=True, outputs=frozenset()),
    constants.AGENT_ROLE_LOG_ENRICHER: Parts(profiles=False, outputs=frozenset({Output.LOG_ENRICHER})),
    constants.AGENT_ROLE_JSON_ENRICHER: Parts(profiles=False, outputs=frozenset({Output.JSON_ENRICHER})),
}
