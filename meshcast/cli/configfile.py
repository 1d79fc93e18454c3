"""`--config FILE` for the long-running commands: their options from a YAML file, as an operator deploys them.

The file is a YAML mapping from option names (as on the command line, without the dashes: `api-addr`,
`heartbeat-timeout`) to values; flags are `true`/`false`. It is read before any other option, and its values become
the command's defaults: an option given on the command line, or through its environment variable (passwords:
`MESHCAST_ETCD_PASSWORD` and the like, kept out of the file), wins. A key that is not an option of the command, a
file that is not a mapping, or a value of the wrong type is refused with one line naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def load_config_file(ctx: click.Context, path: Path) -> dict[str, Any]:
    """The default map `path` gives the command of `ctx`; click.BadParameter naming what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise click.BadParameter(f"{path} is not YAML{where}", param_hint="--config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must be a mapping of option names to values", param_hint="--config")
    options = {opt[2:]: param for param in ctx.command.params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--") and opt != "--config"}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        param = options.get(str(key))
        if param is None or param.name is None:
            raise click.BadParameter(f"{path}: {key!r} is not an option of `{ctx.command_path}`",
                                     param_hint="--config")
        if isinstance(value, dict):
            raise click.BadParameter(f"{path}: {key!r} must be a single value or a list", param_hint="--config")
        try:
            defaults[param.name] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{path}: {key}: {exc.message}", param_hint="--config") from None
    return defaults


def _apply(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **load_config_file(ctx, value)}


def config_option(command: F) -> F:
    """Add `--config FILE` to a command (read before its other options)."""
    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
                        expose_value=False, callback=_apply,
                        help="YAML file of this command's options (names without dashes); the command line "
                             "wins.")(command)
