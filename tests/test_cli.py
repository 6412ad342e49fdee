"""The ``lth`` command as a user runs it: real subprocesses, real exit codes, real stderr.

A user's mistake must end in one readable line and exit status 2, never a traceback; and
the command must never destroy a finished run.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY, registered, with_changes
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.config import bundled_recipes, validate
from lth_core.plugin_api.registry import CORE_PLUGINS, core_plugin_manager, get_registry, make_plugin_manager

_SCRIPT = Path(sys.executable).with_name("lth")
LTH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lth_core.commands.cli"]



def _env(**extra: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def lth(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LTH, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(**env), timeout=600
    )


def tiny_yaml(folder: Path, name: str = "tiny.yaml", **changes) -> Path:
    raw = with_changes(TINY, **changes)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str, only_line: bool = True) -> str:
    """Exit 2, one ``lth: error:`` line (the only stderr line for recipe mistakes), no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("lth: error:")]
    assert len(errors) == 1, lines
    if only_line:
        assert lines == errors, lines
    assert lines[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --- listing --------------------------------------------------------------------------------


def test_recipes_lists_quickstart_with_description() -> None:
    """``lth recipes`` shows the bundled recipes, each with its description's first line."""
    proc = lth("recipes", "--paths")
    assert proc.returncode == 0, proc.stderr
    path = bundled_recipes()["quickstart"]
    description = yaml.safe_load(path.read_text())["description"].splitlines()[0]
    first = next(line for line in proc.stdout.splitlines() if line.startswith("quickstart"))
    assert description in first
    assert str(path) in proc.stdout


# --- user mistakes end in one line ----------------------------------------------------------

#: Run as real subprocesses: what a user sees, exit status and stderr included.
PROCESS_CASES = {
    "unknown_key": (lambda d: ["run", str(tiny_yaml(d, lotery={"rate": 0.2}))], ("'lotery'", "lottery")),
    "set_rate_2": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.rate=2"], ("lottery.rate", "(0, 1)")),
    "missing_path": (lambda d: ["run", str(d / "does-not-exist.yaml")], ("does-not-exist.yaml", "not found", "quickstart")),
    # issue 9, as reported: this created the run folder, then failed inside Lightning
    "quickstart_devices_foo": (lambda d: ["run", "quickstart", "--set", "trainer.devices=foo"], ("trainer.devices is 'foo'",)),
}
#: The same contract through ``lth_core.commands.cli.main`` in this process (each subprocess pays
#: several seconds of importing torch and Lightning).
IN_PROCESS_CASES = {
    "set_unknown_section": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lotery.rate=0.2"], ("'lotery'",)),
    "set_malformed": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.rate"], ("key.sub=value",)),
    "bad_yaml": (
        lambda d: ["run", str(_write(d / "broken.yaml", "model: mlp\ndata: digits\nlottery: {rate: 0.2\n"))],
        ("not valid YAML", "line 4"),
    ),
    "python_tag": (
        lambda d: ["run", str(_write(d / "evil.yaml", "model: !!python/object/apply:os.getcwd []\ndata: digits\n"))],
        ("not valid YAML", "line 1"),
    ),
    "empty": (lambda d: ["run", str(_write(d / "empty.yaml", ""))], ("empty",)),
    "wrong_type": (lambda d: ["run", str(tiny_yaml(d, lottery__rounds="five"))], ("lottery.rounds", "integer")),
    "reserved_trainer_key": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.logger=true"], ("trainer.logger",)),
    # issue 9: trainer values Lightning refuses, caught at load instead of a traceback in round 0
    "trainer_max_steps_abc": (lambda d: ["run", "quickstart", "--set", "trainer.max_steps=abc"], ("trainer.max_steps is 'abc'", "-1")),
    "trainer_max_epochs_x": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.max_epochs=x"], ("trainer.max_epochs is 'x'",)),
    "trainer_precision_7": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.precision=7"], ("trainer.precision is 7", "16-mixed")),
    "trainer_gradient_clip_val_x": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.gradient_clip_val=x"],
                                    ("trainer.gradient_clip_val is 'x'", "number >= 0")),
    "trainer_val_check_interval_negative": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.val_check_interval=-3"],
                                            ("trainer.val_check_interval is -3",)),
    "trainer_devices_foo": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.devices=foo"], ("trainer.devices is 'foo'", "auto")),
    "trainer_accelerator_typo": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.accelerator=gpuu"], ("'gpuu'", "cpu")),
    "trainer_never_ends": (lambda d: ["run", str(tiny_yaml(d)), "--set", "trainer.max_steps=-1"], ("never end",)),
    "rounds_negative": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.rounds=-1"], ("lottery.rounds", ">= 0")),
    "rounds_not_whole": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.rounds=1.5"], ("lottery.rounds", "integer")),
    "criterion_options_unread": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.criterion_options={batch_size: 8}"],
                                 ("lottery.criterion_options.batch_size", "'magnitude'", "no options")),
    "control_name_escapes": (lambda d: ["run", str(tiny_yaml(d)), "--set", "controls=[{name: ../../x, rewind: reinit}]"],
                             ("'../../x'", "not a folder name")),
    "run_name_escapes": (lambda d: ["run", str(tiny_yaml(d)), "--set", "name=../../x"], ("'../../x'", "not a folder name")),
    "bad_date": (lambda d: ["run", str(_write(d / "date.yaml", "model: mlp\ndata: digits\nseed: 2001-13-45\n"))],
                 ("not valid YAML", "month")),
    "key_with_newline": (lambda d: ["run", str(_write(d / "nl.yaml", 'model: mlp\ndata: digits\nlottery: {"ra\\nte": 0.2}\n'))],
                         ("lottery.'ra\\nte'",)),
    "alias_bomb": (lambda d: ["run", str(_write(d / "bomb.yaml", _LAUGHS))], ("more than 100000 values",)),
    "not_utf8": (lambda d: ["run", str(_write_bytes(d / "bin.yaml", b"model: mlp\ndata: \xff\n"))], ("not UTF-8",)),
    "set_yaml_error_one_line": (lambda d: ["run", str(tiny_yaml(d)), "--set", "lottery.rate=[1,"], ("--set", "line 1")),
}
#: The billion laughs: nine levels of ten aliases each, 10^8 values from a few hundred bytes.
_LAUGHS = "model: mlp\ndata: digits\na0: &a0 [lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
) + "description: *a8\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The mistaken ``lth run`` invocations, started side by side to keep the suite short."""
    procs = {}
    for name, (make_args, _) in PROCESS_CASES.items():
        folder = tmp_path_factory.mktemp(name)
        procs[name] = subprocess.Popen(
            [*LTH, *make_args(folder), "--out", str(folder / "out")],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_recipe_mistake_is_one_line_exit_2(error_runs, case: str) -> None:
    """Bad recipes, bad ``--set`` values and missing files: exit 2, one line, no traceback,
    nothing written."""
    proc = error_runs[case]
    assert_user_error(proc, *PROCESS_CASES[case][1])
    assert proc.stdout == ""
    out = Path(proc.args[-1])
    assert not out.exists(), "a refused recipe must not create its run folder"


@pytest.mark.parametrize("case", sorted(IN_PROCESS_CASES))
def test_recipe_mistake_in_process(tmp_path: Path, capsys, case: str) -> None:
    """More recipe mistakes through the CLI's own entry point: status 2 and one line."""
    make_args, needles = IN_PROCESS_CASES[case]
    args = [*make_args(tmp_path), "--out", str(tmp_path / "out")]
    status = cli.main(args)
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess(args, status, captured.out, captured.err), *needles)
    assert not (tmp_path / "out").exists()


def test_unknown_plugin_name_is_one_error_line(tmp_path: Path, capsys) -> None:
    """A model nobody installed is caught before any folder is made, naming the installed ones."""
    args = ["run", str(tiny_yaml(tmp_path)), "--set", "model.name=resnet9000", "--out", str(tmp_path / "out")]
    status = cli.main(args)
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, status, captured.out, captured.err)
    assert_user_error(proc, "'resnet9000'", "lenet300", "mlp", only_line=False)
    assert not (tmp_path / "out").exists()


class BrokenControls:
    """A throwaway plugin: a control naming a criterion nobody installed, and a command
    whose LthError message spans lines."""

    @hookimpl
    def register_controls(self, register):
        register("pruned_by_nothing", criterion="no_such_criterion", rewind=None)

    @hookimpl
    def register_commands(self, register):
        def run(args):
            raise LthError("first line\nsecond line\n")

        register("two-lines", run, help="fails with a two-line message")

        def buggy(args):
            return {}["missing"]

        register("buggy", buggy, help="fails with a bug")


@pytest.fixture
def broken_controls(pm):
    with registered(pm, BrokenControls(), "broken-controls") as plugin:
        yield plugin


def test_a_control_with_a_missing_criterion_fails_before_round_0(broken_controls, tmp_path: Path, capsys) -> None:
    """The control's plugin named a criterion that is not installed: refused at load, one
    line naming the control, its plugin and the installed criteria; no run folder."""
    args = ["run", str(tiny_yaml(tmp_path, controls=["pruned_by_nothing"])), "--out", str(tmp_path / "out")]
    status = cli.main(args)
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess(args, status, captured.out, captured.err),
                      "'pruned_by_nothing'", "'broken-controls'", "'no_such_criterion'", "magnitude", "random")
    assert not (tmp_path / "out").exists()


def test_any_error_is_printed_on_one_line(broken_controls, capsys) -> None:
    """The CLI's last line of defence: an LthError whose message has line breaks (here a
    plugin command's) is still one ``lth: error:`` line."""
    status = cli.main(["two-lines"])
    captured = capsys.readouterr()
    line = assert_user_error(subprocess.CompletedProcess(["two-lines"], status, captured.out, captured.err))
    assert line == "lth: error: first line second line"


def test_a_plugin_command_with_a_bug_is_one_line_naming_it(broken_controls, capsys) -> None:
    """A plugin command that raises something other than LthError has a bug: one line naming
    the command and its plugin, exit 2, no traceback."""
    status = cli.main(["buggy"])
    captured = capsys.readouterr()
    line = assert_user_error(subprocess.CompletedProcess(["buggy"], status, captured.out, captured.err))
    assert line == "lth: error: command 'buggy' (plugin 'broken-controls') raised KeyError: 'missing'"


@pytest.mark.parametrize("how", ["--traceback after the command", "--traceback before it", "LTH_TRACEBACK=1"])
def test_traceback_switch_shows_where_a_plugin_failed(broken_controls, capsys, monkeypatch, how: str) -> None:
    """For plugin authors: the same one line, last, with the whole traceback above it
    (the plugin's file and line); without the switch no traceback at all."""
    argv = {"--traceback after the command": ["buggy", "--traceback"], "--traceback before it": ["--traceback", "buggy"],
            "LTH_TRACEBACK=1": ["buggy"]}[how]
    if how.startswith("LTH_"):
        monkeypatch.setenv("LTH_TRACEBACK", "1")
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "lth: error: command 'buggy' (plugin 'broken-controls') raised KeyError: 'missing'"
    assert err.startswith("Traceback (most recent call last):"), err
    assert f'File "{Path(__file__)}", line' in err and 'return {}["missing"]' in err, err
    monkeypatch.setenv("LTH_TRACEBACK", "0")
    assert cli.main(["buggy"]) == cli.EXIT_USER_ERROR
    assert "Traceback" not in capsys.readouterr().err


# --- lth's own commands are plugins -----------------------------------------------------------


def test_lths_commands_register_through_the_hook_as_core_plugins() -> None:
    """Every core command comes from a CORE_PLUGINS module's ``register_commands``, as a
    plugin's would; those modules sit in every plugin manager, before the entry points."""
    core = core_plugin_manager()
    assert [name for name, _ in core.list_name_plugin()] == list(CORE_PLUGINS)
    commands = {name: entry.plugin for name, entry in get_registry(core).kinds["commands"].items()}
    assert commands == {"run": "lth_core.commands.run", "report": "lth_core.commands.report",
                        "plugins": "lth_core.commands.info", "recipes": "lth_core.commands.info",
                        "install": "lth_core.commands.install", "uninstall": "lth_core.commands.install",
                        "merge": "lth_core.commands.merge", "export": "lth_core.commands.export"}
    assert get_registry(core).get("report_sections", "merge").plugin == "lth_core.commands.merge"
    full = make_plugin_manager()
    assert [name for name, _ in full.list_name_plugin()][:len(CORE_PLUGINS)] == list(CORE_PLUGINS)
    sub = next(a for a in cli.build_parser(get_registry(full))._actions if a.dest == "command")
    assert list(sub.choices)[:len(commands)] == list(commands) and "extend" in sub.choices


class TakesCoreNames:
    """A throwaway plugin that registers a command and a report section named like lth's own."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @hookimpl
    def register_commands(self, register):
        if self.kind == "command":
            register("export", lambda args: 0)

    @hookimpl
    def register_report_sections(self, register):
        if self.kind == "report section":
            register("merge", lambda folder: False, lambda folders, out: [])


@pytest.mark.parametrize("kind, name", [("command", "export"), ("report section", "merge")])
def test_a_plugin_may_not_take_a_core_name(pm, capsys, kind: str, name: str) -> None:
    """Taking a name of lth's own is refused in one line naming the plugin and the name,
    whichever command is run (here ``lth plugins``)."""
    pm.register(TakesCoreNames(kind), name="takes-names")
    status = cli.main(["plugins"])
    captured = capsys.readouterr()
    line = assert_user_error(subprocess.CompletedProcess(["plugins"], status, captured.out, captured.err))
    assert line == f"lth: error: plugin 'takes-names' registers the {kind} '{name}', which is built into lth; rename it"


# --- never overwrite another recipe's run -----------------------------------------------------


def test_run_refuses_folder_of_a_different_recipe(tmp_path: Path) -> None:
    """Pointing ``--out`` at another experiment's folder must not touch its results."""
    raw = copy.deepcopy(TINY)
    raw["lottery"]["rounds"] = 0
    raw["trainer"].update(max_steps=20, val_check_interval=10)
    out = tmp_path / "existing"
    run_lottery(validate(raw, name="tiny"), out, say=lambda s: None)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert out / "summary.json" in files

    other = copy.deepcopy(raw)
    other["seed"] = 1
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    proc = lth("run", str(path), "--out", str(out))
    assert_user_error(proc, "different recipe", str(out), validate(raw).hash(), only_line=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


# --- plugin installation ------------------------------------------------------------------------


def test_install_and_uninstall_parse() -> None:
    """``lth install``/``lth uninstall`` exist with their options and refuse a missing package list."""
    for command, options in (("install", ("--upgrade", "--editable")), ("uninstall", ("--yes",))):
        proc = lth(command, "--help")
        assert proc.returncode == 0, proc.stderr
        for option in options:
            assert option in proc.stdout
        bare = lth(command)
        assert bare.returncode == 2
        assert "packages" in bare.stderr and "Traceback" not in bare.stderr


def test_uninstall_of_absent_plugin_reaches_pip() -> None:
    """``lth uninstall`` runs pip inside lth's own interpreter (nothing is removed here)."""
    proc = lth("uninstall", "-y", "lth-no-such-plugin-for-tests")
    assert proc.returncode == 0, proc.stderr
    assert "not installed" in (proc.stdout + proc.stderr)


@pytest.mark.parametrize("package, refusal", [
    ("torch", "lth uninstall removes lth plugins, and torch {torch} is not one (it has no entry point in the lth group; "
              "lth and other software may need it): use pip uninstall if you really mean it"),
    ("LTH", "lth uninstall removes lth plugins, and LTH is lth itself; use pip uninstall lth to remove lth"),
    ("PyYAML>=6", "lth uninstall removes lth plugins, and PyYAML {pyyaml} is not one"),
])
def test_uninstall_refuses_what_is_not_an_lth_plugin(capsys, package: str, refusal: str) -> None:
    """Refused before pip runs (so nothing is removed), in one line; ``lth uninstall a b``
    with one of them not a plugin removes neither."""
    import importlib.metadata as md

    want = refusal.format(torch=md.version("torch"), pyyaml=md.version("PyYAML"))
    assert cli.main(["uninstall", "-y", "lth-no-such-plugin-for-tests", package]) == cli.EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"lth: error: {want}"), captured.err
    assert md.version("torch") and md.version("lth")


def test_uninstall_of_an_installed_plugin_reaches_pip(tmp_path: Path) -> None:
    """A distribution with an lth entry point passes the check and goes to pip."""
    target = tmp_path / "site"
    assert lth("install", str(_wheel(tmp_path)), PIP_TARGET=str(target)).returncode == 0
    proc = lth("uninstall", "-y", "lth-cli-test-plugin", PYTHONPATH=str(target))
    assert "lth: error" not in proc.stderr, proc.stderr
    assert "lth-cli-test-plugin" in (proc.stdout + proc.stderr).lower()


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python plugin wheel, built by hand (no build backend, no network)."""
    dist, version, module = "lth_cli_test_plugin", "0.0.1", "lth_cli_test_plugin"
    files = {
        f"{module}.py": (
            "from lth_core import hookimpl\n\n\n"
            "@hookimpl\n"
            "def register_criteria(register):\n"
            "    register('cli_test_criterion', lambda model, mask, context: {n: m.float() for n, m in mask.items()})\n"
        ),
        f"{dist}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: lth-cli-test-plugin\nVersion: {version}\n",
        f"{dist}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: lth-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}-{version}.dist-info/entry_points.txt": f"[lth]\ncli_test = {module}\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}-{version}.dist-info/RECORD,,")
    files[f"{dist}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_install_local_wheel_registers_plugin(tmp_path: Path) -> None:
    """``lth install`` of a local wheel (offline: PIP_NO_INDEX, into a PIP_TARGET folder so
    the shared environment is untouched) makes its entry point show in ``lth plugins``."""
    target = tmp_path / "site"
    proc = lth("install", str(_wheel(tmp_path)), PIP_TARGET=str(target))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "lth_cli_test_plugin.py").is_file()
    listed = lth("plugins", "--json", PYTHONPATH=str(target))
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["cli_test"]["distribution"] == "lth-cli-test-plugin"
    assert plugins["cli_test"]["registers"] == {"criteria": ["cli_test_criterion"]}
    assert "magnitude" in plugins  # the bundled plugins load beside it


class RegistersWithABug:
    @hookimpl
    def register_criteria(self, register):
        register("fine", lambda model, mask, context: {})
        return [][0]


def test_a_plugin_whose_registration_raises_is_one_line_naming_it(pm, capsys) -> None:
    pm.register(RegistersWithABug(), name="buggy-registration")
    status = cli.main(["plugins"])
    captured = capsys.readouterr()
    line = assert_user_error(subprocess.CompletedProcess(["plugins"], status, captured.out, captured.err))
    assert line == "lth: error: register_criteria of plugin 'buggy-registration' raised IndexError: list index out of range"
