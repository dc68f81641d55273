"""Commands about the schema changes a migration carries: `ddl list`, `ddl resolve`."""

from __future__ import annotations

import click

from reshard.cli.context import Ctx, emit, json_option
from reshard.cli.root import cli


@cli.group()
def ddl() -> None:
    """Schema changes made on a migration's clusters while it runs.

    DDL on a watched table is captured where it was made and placed on the clusters that
    table's rows flow to: additive changes at once, destructive ones once every stream
    feeding a destination has passed the same change. What reshard will not place pauses
    the appliers (exit 5) until it is resolved by hand. See docs/schema-changes.md.
    """


@ddl.command("list")
@click.argument("name")
@json_option
@click.pass_obj
def ddl_list(ctx: Ctx, name: str) -> None:
    """Every schema change migration NAME captured: where and at which WAL position it was made,
    what it asks of each destination, and where each op was applied or what it waits for."""
    from reshard.control.store import ControlStore
    from reshard.ddl.report import changes_view, human

    store = ControlStore(ctx.config().control_dsn)
    store.migration(name)
    doc = {"command": "ddl list", "migration": name, **changes_view(store, name)}
    emit(ctx, doc, lambda: human(doc))


@ddl.command("resolve")
@click.argument("name")
@click.argument("cluster")
@click.argument("entry", type=int)
@json_option
@click.pass_obj
def ddl_resolve(ctx: Ctx, name: str, cluster: str, entry: int) -> None:
    """Mark the paused schema change CLUSTER#ENTRY of migration NAME as placed by hand.

    Run it after applying the equivalent change on every destination (the pause names
    them; `reshard ddl list` too), then rerun `reshard apply NAME`: the appliers go on
    from where they paused, and nothing was lost meanwhile.
    """
    from reshard.control.store import ControlStore

    store = ControlStore(ctx.config().control_dsn)
    store.migration(name)
    row = store.resolve_ddl(name, cluster, entry)
    store.set_error(name, None)
    doc = {"command": "ddl resolve", "migration": name, "cluster": cluster, "entry": entry, "table": row["tbl"],
           "statement": row["statement"]}
    emit(ctx, doc, lambda: f"{name}: schema change {cluster}#{entry} on {row['tbl']} resolved; "
         f"rerun `reshard apply {name}`")
