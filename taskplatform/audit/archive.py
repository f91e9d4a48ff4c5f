"""A run handle served from the audit, for runs Redis no longer has (expired or lost)."""

from __future__ import annotations

from typing import Any

from taskplatform.audit import reads
from taskplatform.errors import FlowFailed, RunNotFound

TERMINAL = ("succeeded", "failed", "canceled")


class ArchivedRun:
    """Same reads as :class:`taskplatform.client.Run`, answered by ``flow_run_history``."""

    def __init__(self, run_id: str, row: dict[str, Any], *, url: str | None = None) -> None:
        self.run_id = run_id
        self._row = row
        self._url = url

    def __repr__(self) -> str:
        return f"<ArchivedRun {self.run_id}>"

    @classmethod
    def load(cls, run_id: str, *, url: str | None = None) -> ArchivedRun:
        """RunNotFound when the audit has no such run either."""
        row = reads.load_run(run_id, url=url)
        if row is None:
            raise RunNotFound(run_id)
        return cls(run_id, row, url=url)

    def refresh(self) -> None:
        self._row = reads.load_run(self.run_id, url=self._url) or self._row

    def status(self) -> str:
        return str(self._row["status"])

    def outputs(self) -> dict[str, Any] | None:
        return self._row.get("output_data")

    def steps(self) -> dict[str, Any]:
        from taskplatform.client import StepView  # noqa: PLC0415

        return {sid: StepView(v["status"], int(v["attempts"]), v["error"])
                for sid, v in reads.step_summary(self._row).items()}

    def info(self) -> dict[str, Any]:
        r = self._row
        return {
            "run_id": self.run_id, "flow": r["flow_id"], "status": r["status"],
            "outputs": r.get("output_data"), "error": r.get("error_message"),
            "failed_step": r.get("failed_step"),
            "created_at": r["created_at"].timestamp() if r.get("created_at") else None,
            "started_at": None,
            "finished_at": r["completed_at"].timestamp() if r.get("completed_at") else None,
            "steps": reads.step_summary(r), "source": "audit",
        }

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The outputs of a finished run, or FlowFailed; an archived run cannot be waited on."""
        status = self.status()
        if status == "succeeded":
            return self.outputs() or {}
        raise FlowFailed(self.run_id, status, self._row.get("failed_step"),
                         self._row.get("error_message") or
                         ("Redis no longer has this run; the audit has it still running"
                          if status not in TERMINAL else None))


def archived_run(settings: Any, run_id: str) -> ArchivedRun | None:
    """The audit's handle on ``run_id``; None when the audit is off or has no such run."""
    from taskplatform.audit.db import database_url  # noqa: PLC0415

    if not settings.audit:
        return None
    try:
        return ArchivedRun.load(run_id, url=database_url(settings.database_url))
    except RunNotFound:
        return None
