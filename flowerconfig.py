"""Flower settings, read by ``celery -A taskplatform flower`` from the working directory.

Flow steps carry only ids (their ``args`` read ``flow=NAME run=ID step=STEP``); a standalone
action call carries its inputs as keyword arguments, which may hold credentials, so Flower's
pages show their keys only. Authentication is not set here: pass ``--basic-auth`` (or OAuth)
on the command line or ``FLOWER_BASIC_AUTH`` in the environment. Flower's JSON API (behind
the same auth) returns tasks unformatted.
"""

import ast

tasks_columns = "name,uuid,state,args,received,runtime,worker"


def _keys_only(kwargs_repr):
    if not kwargs_repr or kwargs_repr in ("{}", "None"):
        return kwargs_repr
    try:
        value = ast.literal_eval(kwargs_repr)
    except (ValueError, SyntaxError):
        return "{...}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: ..." for k in value) + "}"
    return "{...}"


def format_task(task):
    """Called by Flower's views with a task (or a (uuid, task) pair) copy before display.

    A standalone action call (keyword inputs, no flow) shows its input keys only and hides its
    result, which is the action's output; a step's result is just ``{'status': ...}``.
    """
    target = task[1] if isinstance(task, tuple) else task
    if not str(getattr(target, "name", "") or "").startswith("connectors."):
        return task
    kwargs = getattr(target, "kwargs", None)
    if kwargs and kwargs not in ("{}", "None"):
        target.kwargs = _keys_only(kwargs)
        if getattr(target, "result", None) not in (None, "None"):
            target.result = "(output hidden)"
    return task
