"""The startup tables of ``shipyard serve`` (one process or workers) and ``--engine ray``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.markup import escape
from rich.text import Text

from shipyard.cli.render import named_table

if TYPE_CHECKING:  # the web stack loads only when a server runs
    from shipyard.serve.app import Startup
    from shipyard.serve.ray import RayStartup


def serving(startup: Startup, addresses: str) -> RenderableType:
    """``shipyard serve``'s startup table: every version a load looked at, the artifact that
    serves it and why, its backend, batching and state; ``addresses`` is its caption. One
    line when no model was found."""
    if not startup.rows:
        return Text(f"no model loaded from {startup.layout.describe()}; {addresses}")
    table = named_table(
        escape(startup.layout.describe()),
        ("model", "version", "artifact", "why this artifact", "backend", "batching", "state"),
        left=("model", "artifact", "why this artifact", "backend", "batching", "state"),
    )
    for row in startup.rows:
        served = row.served
        if served is None:
            state = f"[bold red]{row.state.value}[/]: {escape(row.reason)}"
            table.add_row(escape(row.model), str(row.version), "—", "—", "—", "—", state)
            continue
        rows, delay = served.batcher.max_batch_size, served.config.max_queue_delay_ms
        batching = f"up to {rows} rows, {delay:g} ms delay" if rows else "off"
        table.add_row(
            escape(row.model),
            str(row.version),
            f"{escape(served.artifact.name)} ({escape(served.artifact_file)})",
            escape(served.artifact_reason),
            served.backend,
            batching,
            f"[green]{row.state.value}[/]"
            + (f", signed by {escape(served.signed_by)}" if served.signed_by else ""),
        )
    table.caption = escape(addresses)
    return table


def ray_serving(startup: RayStartup) -> RenderableType:
    """``shipyard serve --engine ray``'s startup table: each model's deployment."""
    table = named_table(
        escape(f"{startup.layout.describe()} on Ray ({startup.cluster})"),
        ("model", "versions", "replicas", "running", "CPUs each", "batching", "route"),
        left=("model", "versions", "batching", "route"),
    )
    for row in startup.rows:
        table.add_row(
            escape(row.model),
            ", ".join(row.versions) or "—",
            row.replicas,
            str(row.running),
            f"{row.cpus:g}",
            row.batching,
            escape(row.route),
        )
    table.caption = escape(f"serving on {startup.url}")
    return table
