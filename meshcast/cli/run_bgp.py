"""`meshcast bgp ...`: render exabgp.conf, run ExaBGP with the speaker, drain, and show what is announced and why.

Kept out of main.py so the CLI stays thin; `bgp` is imported only by these commands.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from meshcast.errors import MeshcastError

if TYPE_CHECKING:
    from bgp.settings import RegionSettings

# What ExaBGP 5 needs to run as a foreground child with our speaker (docs/anycast.md): no daemonizing or privilege
# drop (a dropped user may be unable to run the speaker, which ExaBGP then respawns in a loop), no CLI pipe, logs on
# stdout, and an answer (`done`/`error`) for every API command, which the speaker matches to its commands.
EXABGP_ENV = {
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_drop": "false",
    "exabgp_api_cli": "false",
    "exabgp_api_ack": "true",
    "exabgp_api_respawn": "true",
    "exabgp_log_destination": "stdout",
}


def _load(region_file: Path) -> RegionSettings:
    from bgp.settings import load_region_file

    try:
        return load_region_file(region_file)
    except MeshcastError as exc:
        raise click.ClickException(str(exc)) from None


def rendered_config(region_file: Path, check_regions: Path | None, retire: Sequence[str]) -> str:
    """The exabgp.conf for `region_file`, after the cross-region check when `check_regions` is given."""
    from bgp.regions import check_coverage, load_region_dir, parse_retire
    from bgp.render import render_exabgp_conf
    settings = _load(region_file)
    if check_regions is not None:
        try:
            regions = load_region_dir(check_regions)
            violations = check_coverage(regions, settings, parse_retire(retire))
        except MeshcastError as exc:
            raise click.ClickException(str(exc)) from None
        if violations:
            body = "; ".join(str(v) for v in violations)
            raise click.ClickException(f"refused: {region_file}: {body}")
    elif retire:
        raise click.ClickException("--retire needs --check-regions")
    return render_exabgp_conf(settings)


def config(region_file: Path, check_regions: Path | None, retire: Sequence[str], output: Path | None) -> None:
    text = rendered_config(region_file, check_regions, retire)
    if output is None:
        click.echo(text, nl=False)
        return
    _write_atomically(output, text)
    click.echo(f"wrote {output}", err=True)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _status_path(region_file: Path | None, status_file: Path | None) -> Path:
    if status_file is not None:
        return status_file
    if region_file is not None:
        return _load(region_file).status_file
    raise click.ClickException("name the speaker: --region-file FILE or --status-file FILE")


def status(region_file: Path | None, status_file: Path | None, output: str) -> None:
    from bgp.status import format_status, read_status

    path = _status_path(region_file, status_file)
    try:
        doc = read_status(path)
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no status yet (is the speaker running?)") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: cannot read the status: {exc}") from None
    click.echo(json.dumps(doc, indent=2) if output == "json" else format_status(doc))


def drain(region_file: Path | None, drain_file: Path | None, on: bool) -> None:
    if drain_file is None:
        if region_file is None:
            raise click.ClickException("name the speaker: --region-file FILE or --drain-file FILE")
        drain_file = _load(region_file).drain_file
    if on:
        drain_file.parent.mkdir(parents=True, exist_ok=True)
        drain_file.write_text("drained by `meshcast bgp drain`\n")
        click.echo(f"drained: the speaker withdraws within one probe ({drain_file} exists)")
    else:
        drain_file.unlink(missing_ok=True)
        click.echo(f"undrained: the speaker announces again once the gateway is ready ({drain_file} removed)")


def exabgp_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "exabgp"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("exabgp")
    if found is None:
        raise click.ClickException("exabgp not found: pip install exabgp (see pyproject.toml) or pass --exabgp")
    return found


def exabgp_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(EXABGP_ENV)
    env["exabgp_daemon_user"] = pwd.getpwuid(os.getuid()).pw_name
    return env


def run(region_file: Path, check_regions: Path | None, retire: Sequence[str], exabgp: str | None,
        conf_file: Path | None) -> NoReturn:
    """Render the config next to the status file (or at `conf_file`) and become ExaBGP (exec: same PID)."""
    text = rendered_config(region_file, check_regions, retire)
    settings = _load(region_file)
    path = conf_file or settings.state_dir / f"{settings.region}.exabgp.conf"
    _write_atomically(path, text)
    binary = exabgp_binary(exabgp)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(binary, [binary, "server", str(path)], exabgp_environment())


def speaker(region_file: Path) -> None:
    from bgp.speaker import run_speaker

    run_speaker(_load(region_file))
