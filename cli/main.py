"""The `logstore` command line."""

from __future__ import annotations

import click

from logstore import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="logstore")
def cli() -> None:
    """LogStore: a Kafka-style partitioned log store."""


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--listen", default="127.0.0.1:9092", show_default=True)
def serve(data_dir: str | None, listen: str) -> None:
    """Run the broker in the foreground (not available yet: the storage engine comes first)."""
    raise click.ClickException(
        "the gRPC broker is not part of this build yet; only the storage engine is"
    )


def main() -> None:
    """Console-script entry point."""
    cli()
if __name__ == "__main__":
    main()
