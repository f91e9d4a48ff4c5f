"""Small functions the example flows call with ``python.call``."""

from __future__ import annotations

import asyncio
from typing import Any


def total(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum ``qty * price`` over order lines."""
    amount = sum(float(i.get("qty", 0)) * float(i.get("price", 0)) for i in items or [])
    return {"total": round(amount, 2), "lines": len(items or [])}


async def classify(total: float, threshold: float = 100.0) -> dict[str, Any]:
    """An async function: python.call runs it on an event loop."""
    await asyncio.sleep(0)
    return {"big": total > threshold, "threshold": threshold}


def report(title: str, **sections: Any) -> dict[str, Any]:
    """Assemble a report from named sections; ``text`` is a readable rendering."""
    lines = [title, "=" * len(title)]
    for name, value in sections.items():
        lines.append(f"{name}: {value}")
    return {"title": title, "sections": sections, "text": "\n".join(lines)}
