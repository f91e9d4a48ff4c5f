"""``flows list|validate|show|graph``: flow definitions, no backend needed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from taskplatform.cli.base import (
    RET_INVALID,
    RET_OK,
    _errors,
    _flows_dir,
    main,
)
from taskplatform.errors import (
    FlowNotFound,
    FlowValidationError,
)


@main.group()
def flows() -> None:
    """List, validate and show flow definitions."""


@flows.command("list")
def flows_list() -> None:
    """List the flows under the flows folder (TASKPLATFORM_FLOWS_DIR, default flows/).

    \b
    Example:
      python manage.py flows list
    """
    import yaml  # noqa: PLC0415

    from taskplatform.validation import flow_files  # noqa: PLC0415

    root = _flows_dir()
    for path in flow_files(root):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        name = data.get("name", "?") if isinstance(data, dict) else "?"
        desc = data.get("description", "") if isinstance(data, dict) else ""
        click.echo(f"{name:<24} {str(path):<40} {desc}")


@flows.command("validate")
@click.argument("refs", nargs=-1)
def flows_validate(refs: tuple[str, ...]) -> None:
    """Validate flows (all under the flows folder when none is named).

    \b
    Examples:
      python manage.py flows validate
      python manage.py flows validate flows/examples/diamond.yaml
    """
    from taskplatform.validation import find_flow, flow_files, load_flow_file  # noqa: PLC0415

    root = _flows_dir()
    bad = 0
    targets: list[Path | str] = list(refs) or list(flow_files(root))
    for ref in targets:
        try:
            path = find_flow(str(ref), root)
            flow = load_flow_file(path)
        except (FlowValidationError, FlowNotFound) as exc:
            bad += 1
            click.echo(str(exc), err=True)
        else:
            click.echo(f"ok  {path}  ({flow.name}, {len(flow.steps)} steps)")
    sys.exit(RET_INVALID if bad else RET_OK)


def _load(ref: str) -> Any:
    from taskplatform.validation import find_flow, load_flow_file  # noqa: PLC0415

    return load_flow_file(find_flow(ref, _flows_dir()))


@flows.command("show")
@click.argument("ref")
@click.option("--canvas", is_flag=True, help="Show the compiled plan and the launch canvas.")
def flows_show(ref: str, canvas: bool) -> None:
    """Print a flow as validated (with defaults), or its compiled plan.

    \b
    Example:
      python manage.py flows show diamond --canvas
    """
    import yaml  # noqa: PLC0415

    from connectors.base import default_registry  # noqa: PLC0415
    from taskplatform.compiler import compile_flow  # noqa: PLC0415

    with _errors():
        flow = _load(ref)
        if canvas:
            click.echo(compile_flow(flow, default_registry()).describe())
        else:
            click.echo(yaml.safe_dump(flow.to_spec(), sort_keys=False).rstrip())


@flows.command("graph")
@click.argument("ref")
def flows_graph(ref: str) -> None:
    """Print a flow's graph as Mermaid.

    \b
    Example:
      python manage.py flows graph diamond > diamond.mmd
    """
    from connectors.base import default_registry  # noqa: PLC0415
    from taskplatform.compiler import compile_flow  # noqa: PLC0415

    with _errors():
        click.echo(compile_flow(_load(ref), default_registry()).mermaid())


if __name__ == "__main__":
    main()

