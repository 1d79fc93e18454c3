"""`--config FILE`: options of the long-running commands from YAML; the command line wins; bad keys and values are
refused with one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.cli.configfile import config_option
from meshcast.cli.main import cli


@click.command()
@config_option
@click.option("--api-addr", default="127.0.0.1:5681")
@click.option("--heartbeat-timeout", type=float, default=10.0)
@click.option("--allow-remote-admin", is_flag=True)
@click.option("--password", envvar="TEST_PASSWORD", default=None)
def run(api_addr: str, heartbeat_timeout: float, allow_remote_admin: bool, password: str | None) -> None:
    click.echo(f"{api_addr} {heartbeat_timeout} {allow_remote_admin} {password}")


def invoke(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return CliRunner().invoke(run, ["--config", str(path), *args], env=env)


def test_values_become_defaults_and_the_command_line_and_environment_win(tmp_path: Path) -> None:
    text = "api-addr: 10.0.0.1:5681\nheartbeat-timeout: 3\nallow-remote-admin: true\npassword: in-file\n"
    assert invoke(tmp_path, text).output == "10.0.0.1:5681 3.0 True in-file\n"
    result = invoke(tmp_path, text, "--api-addr", "127.0.0.1:1", env={"TEST_PASSWORD": "from-env"})
    assert result.output == "127.0.0.1:1 3.0 True from-env\n"
    assert invoke(tmp_path, "").output == "127.0.0.1:5681 10.0 False None\n"  # an empty file: defaults


def test_bad_files_are_refused_with_one_line(tmp_path: Path) -> None:
    cases = {"bogus: 1\n": "'bogus' is not an option of `run`",
             "heartbeat-timeout: soon\n": "heartbeat-timeout: 'soon' is not a valid float",
             "- a\n- b\n": "must be a mapping of option names to values",
             "api-addr: [\n": "is not YAML (line 2)",
             "api-addr: {a: 1}\n": "'api-addr' must be a single value or a list"}
    for text, message in cases.items():
        result = invoke(tmp_path, text)
        assert result.exit_code == 2, (text, result.output)
        error = result.output.strip().splitlines()[-1]
        assert error.startswith("Error: Invalid value for --config: ") and message in error, (text, error)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
                       st.one_of(st.integers(), st.text(max_size=10), st.booleans()), max_size=5))
def test_any_mapping_is_applied_or_refused_by_key(data: dict[str, object]) -> None:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        result = invoke(Path(tmp), yaml.safe_dump(data))
    unknown = [k for k in data if k not in ("api-addr", "heartbeat-timeout", "allow-remote-admin", "password")]
    if unknown:
        assert result.exit_code == 2 and "is not an option of `run`" in result.output
    else:
        assert result.exit_code in (0, 2) and (result.exit_code == 0 or "Invalid value for --config" in result.output)


def test_the_real_commands_take_config_files(tmp_path: Path) -> None:
    path = tmp_path / "zone-cp.yaml"
    path.write_text("no-such-flag: true\n")
    for command in (["zone-cp", "run"], ["global-cp", "run"], ["ingress", "run"], ["dataplane", "run"],
                    ["gateway", "run"]):
        result = CliRunner().invoke(cli, [*command, "--config", str(path)])
        assert result.exit_code == 2, (command, result.output)
        assert f"'no-such-flag' is not an option of `cli {' '.join(command)}`" in result.output, result.output


@pytest.mark.parametrize(("value", "message"), [
    ("10s", "must be at least 30s"), ("a year", "invalid duration 'a year'"), ("365d", "invalid duration '365d'"),
])
def test_a_bad_intermediate_validity_is_refused_before_anything_starts(value: str, message: str,
                                                                        tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["global-cp", "run", "--state-dir", str(tmp_path), "--intermediate-validity",
                                      value])
    assert result.exit_code == 2, result.output
    assert "--intermediate-validity" in result.output and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # nothing created
