"""The public names are a contract: adding one is a decision, removing one breaks users."""

import subprocess
import sys
from pathlib import Path

import taskplatform


def test_exported_members():
    assert set(taskplatform.__all__) == {
        "app", "create_app", "Client", "Run", "get_run", "submit_flow", "Flow", "FlowBuilder",
        "RunStatus", "StepStatus", "BackendError", "ConfigError", "ConnectorError",
        "ConnectorNotFound", "ExpressionError", "FlowError", "FlowFailed", "FlowNotFound",
        "FlowValidationError", "PermanentError", "PlatformError", "RunNotFound", "RunTimeout",
        "StepTimedOut", "TransientError", "DeadLetterNotFound", "RunLost", "RunStateError",
    }
    assert callable(taskplatform.Run.cancel) and callable(taskplatform.Run.resume)
    for name in taskplatform.__all__:
        assert getattr(taskplatform, name) is not None


def test_error_tree():
    e = taskplatform
    assert issubclass(e.FlowValidationError, e.FlowError)
    assert issubclass(e.FlowFailed, e.FlowError) and issubclass(e.FlowError, e.PlatformError)
    assert issubclass(e.StepTimedOut, e.TransientError) and issubclass(e.TransientError, e.ConnectorError)
    assert issubclass(e.BackendError, e.PlatformError)
    assert issubclass(e.RunLost, e.FlowFailed) and issubclass(e.RunStateError, e.FlowError)


def test_statuses_are_the_contract_values():
    assert [s.value for s in taskplatform.RunStatus] == [
        "pending", "running", "succeeded", "failed", "canceled"]
    assert {s.value for s in taskplatform.StepStatus} >= {
        "pending", "running", "retrying", "succeeded", "failed", "dead_lettered", "skipped",
        "upstream_failed", "canceled"}


def test_importing_reads_no_environment(monkeypatch):
    # The app is configured lazily: importing taskplatform must not need REDIS_URL.
    env = {"PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", "import taskplatform; print(len(taskplatform.__all__))"],
                          env=env, capture_output=True, text=True, cwd=str(root))
    assert done.returncode == 0, done.stderr
