"""A plain install (no extras): every ``--help`` works, and a command whose extra is missing
says which one to install instead of a traceback, before doing any work.

Missing packages are simulated in a child process by ``sys.modules[name] = None``, which makes
both ``import name`` and ``importlib.util.find_spec(name)`` behave as if it were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli, extras

REPO = Path(__file__).resolve().parents[2]
ALL_OPTIONAL = sorted(m for modules in extras.EXTRA_MODULES.values() for m in modules)
SUBCOMMANDS = [[], ["serve"], ["models"], ["models", "fetch"], ["models", "list"], ["build"]]
SUBCOMMANDS.append(["bench"])


def run_cli(
    args: list[str], missing: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"for name in {missing!r}: sys.modules[name] = None\n"
        "from service.cli import main\n"
        f"raise SystemExit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_help_works_without_any_extra(command: list[str], tmp_path: Path) -> None:
    result = run_cli([*command, "--help"], ALL_OPTIONAL, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: detect-serve")


# Everything else runs on the default install (build and bench included); serving with the
# tensorrt backend needs the gpu extra.
@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["serve", "--prepare"], {"DETECT_BACKEND": "tensorrt"}),
        (["serve"], {"DETECT_BACKEND": "tensorrt"}),
    ],
    ids=["serve --prepare", "serve"],
)
def test_a_missing_extra_is_named_before_any_work(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {**env, "DETECT_HOME": str(home)}
    result = run_cli(command, list(extras.EXTRA_MODULES["gpu"]), tmp_path, env)
    assert result.returncode == 2
    assert "pip install 'detect-serve[gpu]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing fetched, built or cached (no home either)


def test_a_tensorrt_build_needs_no_gpu_extra(tmp_path: Path) -> None:
    """Without TensorRT a build still makes and checks the TensorRT-ready ONNX and records it
    pending (tests/engines/test_tensorrt_build.py): the CLI goes on to the model itself."""
    env = {"DETECT_HOME": str(tmp_path / "home")}
    command = ["build", "no-such-model", "--backend", "tensorrt"]
    result = run_cli(command, list(extras.EXTRA_MODULES["gpu"]), tmp_path, env)
    assert result.returncode != 0
    assert "no model 'no-such-model'" in result.stderr, result.stderr
    assert "detect-serve[gpu]" not in result.stderr


def test_a_late_optional_import_still_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def needs_cuda(_: object) -> int:
        raise ModuleNotFoundError("No module named 'cuda'", name="cuda.bindings")

    monkeypatch.setattr(cli, "cmd_models_list", needs_cuda)
    assert cli.main(["models", "list"]) == 2
    assert "pip install 'detect-serve[gpu]'" in capsys.readouterr().err


def test_other_missing_modules_are_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> int:
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(cli, "cmd_models_list", broken)
    with pytest.raises(ModuleNotFoundError):  # a required dependency: a real bug, shown as such
        cli.main(["models", "list"])


def test_every_extra_named_exists_in_the_package_metadata() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert set(extras.EXTRA_MODULES) <= set(project["optional-dependencies"])
