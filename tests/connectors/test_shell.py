"""``shell.run``: argv without a shell, cwd, env, stdin, exit codes and timeouts."""

from __future__ import annotations

import os
import sys

import pytest
from pydantic import ValidationError

from connectors.shell import MAX_OUTPUT_CHARS, Run
from taskplatform.errors import PermanentError, TransientError

PY = sys.executable


@pytest.fixture
def shell() -> Run:
    return Run()


def test_output_shape(shell, call):
    out = call(shell, argv=["printf", "%s", "hello"])
    assert out == {"exit_code": 0, "stdout": "hello", "stderr": ""}


@pytest.mark.parametrize(
    "arg",
    ["$(echo hacked)", "; rm -rf /nonexistent-tp-test", "`id`", "a && b || c", "*", "$HOME",
     "'quoted' \"double\"", "line1\nline2", "> /tmp/tp-should-not-exist", "| cat"],
)
def test_arguments_are_passed_literally(shell, call, arg):
    out = call(shell, argv=["printf", "%s", arg])
    assert out["stdout"] == arg
    assert out["exit_code"] == 0


def test_each_argv_item_is_one_argument(shell, call):
    out = call(shell, argv=[PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))",
                            "a b", "", "c;d"])
    assert out["stdout"].strip() == '["a b", "", "c;d"]'


def test_cwd(shell, call, tmp_path):
    (tmp_path / "marker.txt").write_text("here")
    out = call(shell, argv=[PY, "-c", "import os; print(os.getcwd()); print(open('marker.txt').read())"],
               cwd=str(tmp_path))
    lines = out["stdout"].splitlines()
    assert os.path.samefile(lines[0], tmp_path)
    assert lines[1] == "here"


def test_env_is_merged_with_the_environment(shell, call, monkeypatch):
    monkeypatch.setenv("TP_TEST_INHERITED", "from-parent")
    monkeypatch.setenv("TP_TEST_OVERRIDDEN", "old")
    script = ("import os; print(os.environ['TP_TEST_INHERITED']); print(os.environ['TP_TEST_NEW']); "
              "print(os.environ['TP_TEST_OVERRIDDEN']); print('PATH' in os.environ)")
    out = call(shell, argv=[PY, "-c", script], env={"TP_TEST_NEW": "new", "TP_TEST_OVERRIDDEN": "new2"})
    assert out["stdout"].splitlines() == ["from-parent", "new", "new2", "True"]
    assert os.environ["TP_TEST_OVERRIDDEN"] == "old"  # the worker's own environment is untouched


def test_stdin(shell, call):
    out = call(shell, argv=["cat"], stdin="line one\nline two ✓\n")
    assert out["stdout"] == "line one\nline two ✓\n"


@pytest.fixture
def silent_stdin():
    """fd 0 is a pipe that stays open and never gets data (as a worker's stdin may be)."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


def test_no_stdin_reads_nothing(shell, call, silent_stdin):
    # Without stdin the child must see end-of-file at once, not block on the worker's stdin.
    out = call(shell, argv=["cat"], timeout_s=5)
    assert out == {"exit_code": 0, "stdout": "", "stderr": ""}


def test_stderr_is_captured(shell, call):
    out = call(shell, argv=[PY, "-c", "import sys; sys.stderr.write('warned\\n'); print('ok')"])
    assert out == {"exit_code": 0, "stdout": "ok\n", "stderr": "warned\n"}


def test_nonzero_exit_is_permanent_with_code_and_stderr_tail(shell, call):
    script = ("import sys\n"
              "for i in range(10): sys.stderr.write(f'err line {i}\\n')\n"
              "sys.exit(3)")
    with pytest.raises(PermanentError) as info:
        call(shell, argv=[PY, "-c", script])
    message = str(info.value)
    assert "exited with 3" in message
    assert "err line 9" in message and "err line 8" in message and "err line 7" in message
    assert "err line 0" not in message  # only the tail
    assert not isinstance(info.value, TransientError)


def test_nonzero_exit_without_stderr(shell, call):
    with pytest.raises(PermanentError, match=r"'false' exited with 1$"):
        call(shell, argv=["false"])


def test_allow_failure_returns_the_exit_code(shell, call):
    out = call(shell, argv=[PY, "-c", "import sys; print('partial'); sys.exit(7)"], allow_failure=True)
    assert out == {"exit_code": 7, "stdout": "partial\n", "stderr": ""}


def test_missing_program(shell, call):
    with pytest.raises(PermanentError, match="command not found: 'tp-no-such-program-xyz'"):
        call(shell, argv=["tp-no-such-program-xyz", "--help"])


def test_missing_program_by_path(shell, call, tmp_path):
    with pytest.raises(PermanentError, match="command not found"):
        call(shell, argv=[str(tmp_path / "nope")])


def test_program_not_executable(shell, call, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(PermanentError, match="command not executable"):
        call(shell, argv=[str(script)])


def test_missing_cwd_is_not_reported_as_missing_command(shell, call, tmp_path):
    missing = str(tmp_path / "missing-dir")
    with pytest.raises(PermanentError, match="cwd does not exist") as info:
        call(shell, argv=["true"], cwd=missing)
    assert "command not found" not in str(info.value)


def test_cwd_that_is_a_file(shell, call, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(PermanentError, match="cwd is not a directory"):
        call(shell, argv=["true"], cwd=str(afile))


def test_timeout_is_transient(shell, call):
    with pytest.raises(TransientError, match=r"timed out after 0\.2s"):
        call(shell, argv=["sleep", "30"], timeout_s=0.2)


def test_long_output_is_capped(shell, call):
    out = call(shell, argv=[PY, "-c", f"print('x' * {MAX_OUTPUT_CHARS + 10}, end='')"])
    assert out["stdout"].startswith("x" * 100)
    assert out["stdout"].endswith("[truncated 10 chars]")


def test_undecodable_output_is_replaced(shell, call):
    out = call(shell, argv=[PY, "-c", "import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe')"])
    assert out["stdout"].startswith("ok")
    assert "\ufffd" in out["stdout"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"argv": []}, id="empty-argv"),
        pytest.param({"argv": "echo hi"}, id="argv-string"),
        pytest.param({}, id="no-argv"),
        pytest.param({"argv": ["true"], "timeout_s": 0}, id="zero-timeout"),
        pytest.param({"argv": ["true"], "shell": True}, id="unknown-key"),
        pytest.param({"argv": ["true"], "env": {"A": 1}}, id="non-string-env"),
    ],
)
def test_invalid_inputs(shell, raw):
    with pytest.raises(ValidationError):
        shell.parse_inputs(raw)


def test_metadata(shell):
    assert shell.name == "shell.run"
    assert shell.execution_mode == "sync"
