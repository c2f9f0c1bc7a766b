"""``personify content …``: the content catalog from the command line: items (list, show,
create, update, publish, unpublish, archive, rollback, versions), placements, and bulk import
and export (docs/content.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from personify.cli.context import CliContext, echo_json, pass_ctx, read_json

if TYPE_CHECKING:
    from personify.content.catalog import ContentCatalog


def _catalog(ctx: CliContext) -> ContentCatalog:
    from personify.content.catalog import ContentCatalog
    from personify.store.database import open_database

    return ContentCatalog(open_database(ctx.settings))


_PUBLISH = click.option("--publish", is_flag=True, help="publish the saved version at once")


@click.group()
def content() -> None:
    """The content catalog: items, placements, import and export."""


@content.command("list")
@click.option("--type", "kind", default=None, help="only this type (banner, product…)")
@click.option(
    "--status",
    type=click.Choice(["draft", "published", "archived"]),
    default=None,
    help="only this status (archived items only when asked)",
)
@click.option("--tag", default=None, help="only items with this tag")
@click.option("--placement", default=None, help="only items for this placement")
@pass_ctx
def content_list(
    ctx: CliContext, kind: str | None, status: str | None, tag: str | None, placement: str | None
) -> None:
    """List items: id, version, status, type."""
    catalog = _catalog(ctx)
    after: str | None = None
    rows = []
    while True:
        page = catalog.list_items(
            type=kind, status=status, tag=tag, placement=placement, limit=1000, after=after
        )
        rows.extend(page.items)
        if page.next is None:
            break
        after = page.next
    width = max((len(item.id) for item in rows), default=0)
    for item in rows:
        served = f"serves v{item.published_version}" if item.published_version else ""
        click.echo(
            f"{item.id:<{width}}  v{item.version:<4} {item.status:<9} "
            f"{item.document['type']:<10} {served}".rstrip()
        )


@content.command("show")
@click.argument("item_id")
@click.option("--version", type=click.IntRange(min=1), default=None, help="this saved version")
@pass_ctx
def content_show(ctx: CliContext, item_id: str, version: int | None) -> None:
    """Print item ITEM_ID (its newest version, or --version) as JSON."""
    catalog = _catalog(ctx)
    if version is None:
        echo_json(catalog.get_item(item_id).to_dict())
    else:
        echo_json(catalog.item_version(item_id, version))


@content.command("create")
@click.argument("body")
@_PUBLISH
@pass_ctx
def content_create(ctx: CliContext, body: str, publish: bool) -> None:
    """Save a new item from BODY (JSON, @FILE or - for stdin) and print it."""
    echo_json(_catalog(ctx).create_item(read_json(body), publish=publish).to_dict())


@content.command("update")
@click.argument("item_id")
@click.argument("changes")
@_PUBLISH
@pass_ctx
def content_update(ctx: CliContext, item_id: str, changes: str, publish: bool) -> None:
    """Save the next version of ITEM_ID with CHANGES (JSON, @FILE or -) and print it."""
    parsed = read_json(changes)
    if not isinstance(parsed, dict):
        raise click.BadParameter("changes are a JSON object")
    echo_json(_catalog(ctx).update_item(item_id, parsed, publish=publish).to_dict())


@content.command("publish")
@click.argument("item_id")
@pass_ctx
def content_publish(ctx: CliContext, item_id: str) -> None:
    """Publish ITEM_ID's newest version."""
    echo_json(_catalog(ctx).publish(item_id).to_dict())


@content.command("unpublish")
@click.argument("item_id")
@pass_ctx
def content_unpublish(ctx: CliContext, item_id: str) -> None:
    """Take ITEM_ID back to draft."""
    echo_json(_catalog(ctx).unpublish(item_id).to_dict())


@content.command("archive")
@click.argument("item_id")
@pass_ctx
def content_archive(ctx: CliContext, item_id: str) -> None:
    """Archive ITEM_ID (refused while a placement falls back to it)."""
    echo_json(_catalog(ctx).archive(item_id).to_dict())


@content.command("rollback")
@click.argument("item_id")
@click.argument("version", type=click.IntRange(min=1))
@pass_ctx
def content_rollback(ctx: CliContext, item_id: str, version: int) -> None:
    """Save a new version of ITEM_ID holding VERSION's document (republished if published)."""
    echo_json(_catalog(ctx).rollback(item_id, version).to_dict())


@content.command("versions")
@click.argument("item_id")
@pass_ctx
def content_versions(ctx: CliContext, item_id: str) -> None:
    """List ITEM_ID's versions, newest first: number, what made it, when."""
    for version in _catalog(ctx).item_versions(item_id):
        click.echo(f"v{version['version']:<4} {version['change']:<9} {version['savedAt']}")


@content.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write here (default: standard output)",
)
@click.option("--archived", is_flag=True, help="include archived items")
@pass_ctx
def content_export(ctx: CliContext, output: Path | None, archived: bool) -> None:
    """Print (or write) the whole catalog as JSON, in the shape import reads."""
    text = json.dumps(_catalog(ctx).export(include_archived=archived), indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")


@content.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--publish", is_flag=True, help="publish items that give no status of their own")
@pass_ctx
def content_import(ctx: CliContext, file: Path, publish: bool) -> None:
    """Import items and placements from FILE (.json export, .jsonl items, .csv products)."""
    import_catalog_file(ctx, file, publish=publish)


def import_catalog_file(ctx: CliContext, file: Path, *, publish: bool) -> None:
    """Import a catalog file and print the result; exit 1 when an entry was refused."""
    from personify.content.files import read_catalog_file

    result = _catalog(ctx).import_catalog(read_catalog_file(file), publish=publish).to_dict()
    echo_json(result)
    if result["items"]["refused"] or result["placements"]["refused"]:
        sys.exit(1)


@content.group("placements")
def placements() -> None:
    """Placements: the slots the decision engine fills."""


@placements.command("list")
@click.option("--archived", is_flag=True, help="include archived placements")
@pass_ctx
def placements_list(ctx: CliContext, archived: bool) -> None:
    """List placements: id, version, status, strategy, default item."""
    found = _catalog(ctx).list_placements(include_archived=archived)
    width = max((len(p.id) for p in found), default=0)
    for placement in found:
        document = placement.document
        default = document["defaultItem"] or "-"
        click.echo(
            f"{placement.id:<{width}}  v{placement.version:<4} {placement.status:<8} "
            f"{document['strategy']['name']:<15} {default}"
        )


@placements.command("show")
@click.argument("placement_id")
@pass_ctx
def placements_show(ctx: CliContext, placement_id: str) -> None:
    """Print placement PLACEMENT_ID as JSON."""
    echo_json(_catalog(ctx).get_placement(placement_id).to_dict())


@placements.command("create")
@click.argument("body")
@pass_ctx
def placements_create(ctx: CliContext, body: str) -> None:
    """Save a new placement from BODY (JSON, @FILE or -) and print it."""
    echo_json(_catalog(ctx).create_placement(read_json(body)).to_dict())


@placements.command("update")
@click.argument("placement_id")
@click.argument("changes")
@pass_ctx
def placements_update(ctx: CliContext, placement_id: str, changes: str) -> None:
    """Save the next version of PLACEMENT_ID with CHANGES (JSON, @FILE or -)."""
    parsed = read_json(changes)
    if not isinstance(parsed, dict):
        raise click.BadParameter("changes are a JSON object")
    echo_json(_catalog(ctx).update_placement(placement_id, parsed).to_dict())


@placements.command("archive")
@click.argument("placement_id")
@pass_ctx
def placements_archive(ctx: CliContext, placement_id: str) -> None:
    """Archive PLACEMENT_ID."""
    echo_json(_catalog(ctx).archive_placement(placement_id).to_dict())
