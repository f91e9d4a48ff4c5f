"""taskplatform: flows of connector actions on Celery, with Redis state and at-least-once steps."""

# The Celery app (``celery -A taskplatform worker``)
from taskplatform.app import app, create_app

# Python API
from taskplatform.client import Client, Run, get_run, submit_flow

# Flow model
from taskplatform.builder import FlowBuilder
from taskplatform.flow import Flow

# Statuses
from taskplatform.state import RunStatus, StepStatus

# Errors
from taskplatform.errors import (
    BackendError,
    ConfigError,
    ConnectorError,
    ConnectorNotFound,
    ExpressionError,
    FlowError,
    FlowFailed,
    FlowNotFound,
    FlowValidationError,
    PermanentError,
    PlatformError,
    DeadLetterNotFound,
    RunLost,
    RunNotFound,
    RunStateError,
    RunTimeout,
    StepTimedOut,
    TransientError,
)

__all__ = [
    # app
    "app",
    "create_app",
    # API
    "Client",
    "Run",
    "get_run",
    "submit_flow",
    # model
    "Flow",
    "FlowBuilder",
    # statuses
    "RunStatus",
    "StepStatus",
    # errors
    "BackendError",
    "ConfigError",
    "ConnectorError",
    "ConnectorNotFound",
    "ExpressionError",
    "FlowError",
    "FlowFailed",
    "FlowNotFound",
    "FlowValidationError",
    "PermanentError",
    "PlatformError",
    "DeadLetterNotFound",
    "RunLost",
    "RunNotFound",
    "RunStateError",
    "RunTimeout",
    "StepTimedOut",
    "TransientError",
]
