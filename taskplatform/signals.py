"""Run-level signals, for audit and metrics: sent once per event, in the process where it happened."""

from celery.utils.dispatch import Signal

#: A run was written to Redis and its first steps published. Args: run_id, flow, spec.
run_submitted = Signal(name="run_submitted", providing_args={"run_id", "flow", "spec"})
#: A step attempt is about to run its action (inputs resolved, secrets not yet masked).
#: Args: run_id, step_id, attempt, detail, inputs, connector.
step_started = Signal(name="step_started",
                      providing_args={"run_id", "step_id", "attempt", "detail", "inputs", "connector"})
#: A step reached a final status. Args: run_id, step_id, status, detail.
step_settled = Signal(name="step_settled", providing_args={"run_id", "step_id", "status", "detail"})
#: A run reached its terminal status (sent exactly once). Args: run_id, status, outputs, error.
run_finished = Signal(name="run_finished", providing_args={"run_id", "status", "outputs", "error"})
#: A finished run was resumed or a step replayed: it is running again. Args: run_id, steps (re-run ids).
run_resumed = Signal(name="run_resumed", providing_args={"run_id", "steps"})
