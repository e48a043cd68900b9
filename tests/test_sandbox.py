"""The sandbox's own workings: the caller killed mid-command, the folders it refuses, output made
harmless, and what happens without a sandbox. The hostile commands are in test_sandbox_hostile.py.
Folders that the sandbox would hide anyway (/tmp) prove nothing, so the host-side paths of these
tests live under /var/tmp, which the sandbox shows read-only."""
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, sandboxed

from nimllm.config import UserError
from nimllm.sandbox import Limits, Sandbox, trim, visible


@pytest.fixture
def base():
    """A folder on the host that the sandbox shows (read-only), unlike /tmp."""
    path = Path(tempfile.mkdtemp(prefix="nimllm-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work(base) -> Path:
    (base / "work").mkdir()
    return base / "work"




def survivors(marker: str) -> list[int]:
    """Processes whose command line holds the marker."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(p.name))
        except OSError:
            pass
    return found


@sandboxed
def test_killing_the_caller_mid_command_leaves_no_survivors(work):
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from nimllm.sandbox import Sandbox; "
              f"print('running', flush=True); Sandbox({str(work)!r}).run('sleep 1000.4 & sleep 1000.5')")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "running\n"
    deadline = time.monotonic() + 10
    while not survivors("sleep 1000.5") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors("sleep 1000.5")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while survivors("sleep 1000.") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors("sleep 1000.") == []


def test_output_is_made_harmless_and_trimmed():
    shown = visible(b"\x1b]0;title\x07\x1b[31mred\x1b[0m\x00\x07\xff \xe2\x80\xae text\r\n")
    assert shown == "red\\x00\\x07\ufffd \\u202e text\n"
    text = "\n".join(f"line {i}" for i in range(100))
    cut = trim(text, 6, 1000)
    assert cut.splitlines()[:3] == ["line 0", "line 1", "line 2"] and cut.splitlines()[-1] == "line 99"
    assert "characters cut" in cut and len(cut.splitlines()) == 7
    assert len(trim("x" * 5000, 10, 300)) < 400 and trim("short", 10, 300) == "short"


def test_without_a_sandbox_it_says_why_and_keeps_the_limits(work, tmp_path, monkeypatch):
    assert not Sandbox(work, use_bwrap=False).active
    monkeypatch.setenv("PATH", str(tmp_path))                     # no bwrap on the PATH
    missing = Sandbox(work, limits=Limits(seconds=1))
    assert not missing.active and "not installed" in missing.reason
    (tmp_path / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    (tmp_path / "bwrap").chmod(0o755)
    broken = Sandbox(work)
    assert not broken.active and "cannot make a sandbox" in broken.reason and "namespace" in broken.reason
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = missing.run("sleep 1000.6")                           # unsandboxed, still limited
    assert result.killed == "time" and not result.sandboxed and survivors("sleep 1000.6") == []


def test_the_folder_is_never_home_nor_inside_a_hidden_model_folder(base, monkeypatch):
    (base / "home" / "project").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(base / "home"))
    monkeypatch.setenv("NIMLLM_HOME", str(base / "home" / ".nimllm"))
    with pytest.raises(UserError, match="project folder"):
        Sandbox(base / "home")                                    # home itself is never the folder
    (base / "home" / ".nimllm" / "models" / "m").mkdir(parents=True)
    with pytest.raises(UserError, match="commands may not see"):
        Sandbox(base / "home" / ".nimllm" / "models" / "m")       # nor a folder the sandbox hides
    with pytest.raises(UserError, match="commands may not see"):
        Sandbox(base / "home" / "project", hide=[base / "home"])
    assert Sandbox(base / "home" / "project", use_bwrap=False).folder == (base / "home" / "project").resolve()


@pytest.mark.slow   # 400 commands, half of them sandboxed
def test_a_command_that_ends_right_after_its_output_keeps_its_exit_status(work):
    """The output closes a moment before the command exits; the command is let go, not killed (a killed one
    reads as exit -9 whatever it did). Without the sandbox too, where the race showed."""
    (work / "a.py").write_text("print(1)\n")
    sandbox = Sandbox(work)
    for sandboxed_now in {False, sandbox.active}:
        codes = [sandbox.execute(command, sandboxed_now).exit_code
                 for _ in range(100) for command in ("tail -n 1 a.py", "exit 3")]
        assert codes == [0, 3] * 100, (sandboxed_now, codes)
