"""The sandbox alone, with the hostile commands of ../shared/notes/agent-safety.md: each runs for real,
the host must be unchanged afterwards, and a control run without the sandbox shows the command would
have worked. Folders that the sandbox would hide anyway (/tmp) prove nothing, so the host-side paths
of these tests live under /var/tmp, which the sandbox shows read-only."""
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO

from nimllm.config import UserError
from nimllm.sandbox import Limits, PidsCgroup, Sandbox, trim, visible


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


def probe() -> Sandbox:
    folder = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        return Sandbox(folder)
    finally:
        shutil.rmtree(folder)


PROBE = probe()
sandboxed = pytest.mark.skipif(not PROBE.active, reason=f"no sandbox here: {PROBE.reason}")


def sandbox_python(folder: Path) -> str:
    """A Python the sandbox can run (one under a hidden home, like pyenv's, it cannot)."""
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if run(folder, f"{python} -c pass").exit_code == 0:
            return python
    pytest.skip("no Python outside the folders the sandbox hides")


def run(folder: Path, command: str, **limits):
    return Sandbox(folder, limits=Limits(**limits)).run(command)


def control(folder: Path, command: str):
    """The same command without the sandbox: proof that it does something when nothing stops it."""
    return Sandbox(folder, use_bwrap=False).run(command)


@sandboxed
def test_writes_outside_the_folder_leave_the_host_unchanged(base, work):
    home = Path.home()
    bashrc = home / ".bashrc"
    before = bashrc.read_bytes() if bashrc.exists() else None
    outside = base / "outside.txt"
    commands = [f"echo x > {outside}", f"touch {home}/nimllm-pwned", f"echo x >> {bashrc}", "echo x > /tmp/outside",
                f"touch {REPO}/nimllm-pwned", f"cp /bin/true {base}/copied", f"mkdir {base}/made"]
    for command in commands:
        run(work, command)
    assert not outside.exists() and not (home / "nimllm-pwned").exists() and not (REPO / "nimllm-pwned").exists()
    assert not (base / "copied").exists() and not (base / "made").exists()
    assert (bashrc.read_bytes() if bashrc.exists() else None) == before
    assert sorted(os.listdir(base)) == ["work"]
    assert run(work, "echo inside > made.txt && mkdir -p sub/deeper").exit_code == 0    # inside: it works
    assert (work / "made.txt").read_text() == "inside\n" and (work / "sub" / "deeper").is_dir()
    control(work, f"echo x > {outside}")
    assert outside.exists()


@sandboxed
def test_git_and_protected_paths_stay_read_only_also_behind_symlinks(work):
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    store = work / "model" / "conversations.sqlite"
    store.parent.mkdir()
    store.write_bytes(b"the store")
    (work / "realhooks").mkdir()
    shutil.rmtree(work / ".git" / "hooks")
    (work / ".git" / "hooks").symlink_to(work / "realhooks")     # hooks behind a link, inside the folder
    config = (work / ".git" / "config").read_bytes()
    sandbox = Sandbox(work, protect=[work / "model"])
    for command in ["echo x >> .git/config", "touch .git/hooks/pre-commit", "touch realhooks/post-checkout",
                    "rm -rf .git", "echo x > model/conversations.sqlite", "rm -rf model", "mv .git elsewhere"]:
        assert sandbox.run(command).exit_code != 0, command
    assert (work / ".git" / "config").read_bytes() == config and store.read_bytes() == b"the store"
    assert os.listdir(work / "realhooks") == [] and not (work / "elsewhere").exists()
    assert sandbox.run("git status --short").exit_code == 0                # reading git still works


@sandboxed
def test_links_and_devices(base, work):
    target = base / "target"
    for command in [f"ln -s {target} l && echo x > l", "ln /etc/passwd hl", "mknod d c 1 3", "mknod p2 b 8 0"]:
        run(work, command)
    assert not target.exists() and not (work / "hl").exists() and not (work / "d").exists()


class Server:
    """A TCP server on the host's loopback counting connections, and a Unix socket server inside the
    working folder (the one place a sandboxed command can see a host socket)."""

    def __init__(self, folder: Path):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.unix_path = folder / "host.sock"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(self.unix_path))
        self.unix.listen()
        self.accepted = 0
        for s in (self.tcp, self.unix):
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, server):
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"hello from the host\n")
            conn.close()

    def close(self):
        self.tcp.close()
        self.unix.close()


@sandboxed
def test_no_network_by_any_route(work):
    server = Server(work)
    try:
        py = sandbox_python(work)
        connect_tcp = f"{py} -c \"import socket; print(socket.create_connection(('127.0.0.1', {server.port})).recv(99))\""
        connect_unix = (f"{py} -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('host.sock'); "
                        "print(s.recv(99))\"")
        routes = [connect_tcp, connect_unix, f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{server.port}; cat <&3'",
                  f"curl -s --max-time 3 http://127.0.0.1:{server.port}/", f"wget -q -t 1 -T 2 -O- http://127.0.0.1:{server.port}/",
                  "wget -q -t 1 -T 2 -O- http://1.1.1.1/", "getent ahosts example.com", "ping -c 1 -W 1 127.0.0.1",
                  f"nc -z -w 2 127.0.0.1 {server.port}"]
        for route in routes:
            result = run(work, route, seconds=5)
            assert result.exit_code != 0 and "hello from the host" not in result.output, route
        assert server.accepted == 0
        assert "hello from the host" in control(work, connect_tcp).output     # the server does answer
        assert "hello from the host" in control(work, connect_unix).output
        assert server.accepted == 2
    finally:
        server.close()


@sandboxed
def test_no_privileges_and_no_setuid_files(work):
    status = run(work, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status").output
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    run(work, "cp /bin/bash sb && chmod u+s sb; chmod 4755 sb; install -m 4755 /bin/bash sb2; sudo -n id > sudo.txt")
    for name in ("sb", "sb2"):
        if (work / name).exists():
            assert not (work / name).stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert "uid=" not in ((work / "sudo.txt").read_text() if (work / "sudo.txt").exists() else "")


@sandboxed
def test_host_processes_and_secrets_are_out_of_sight(base, monkeypatch):
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("SECRET-KEY")
    (home / "project").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET-ENV")
    work = home / "project"
    result = run(work, f"cat {home}/.ssh/id_ed25519; cat ~/.ssh/id_ed25519; env; kill -0 {os.getpid()} && echo seen")
    assert "SECRET" not in result.output and "AWS_SECRET" not in result.output and "seen" not in result.output
    processes = run(work, "ls /proc | grep -c '^[0-9]'").output.split()[0]
    assert 0 < int(processes) < 10                                         # only the sandbox's own processes
    assert "SECRET-KEY" in control(work, f"cat {home}/.ssh/id_ed25519").output
    with pytest.raises(UserError, match="project folder"):
        Sandbox(home)                                                          # home itself is never the folder


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
def test_time_limit_and_no_survivors(work):
    start = time.monotonic()
    result = run(work, "sleep 1000.1", seconds=1)
    assert result.timed_out and result.exit_code is None and time.monotonic() - start < 5
    result = run(work, "sleep 1000.2 & (while :; do sleep 0.1; done) & setsid nohup sleep 1000.3 > /dev/null 2>&1 & "
                       "echo started", seconds=5)
    assert result.exit_code == 0 and "started" in result.output and result.seconds < 3
    time.sleep(0.2)
    assert survivors("sleep 1000.") == []


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


@sandboxed
def test_resource_limits(work):
    if os.geteuid() == 0 and not PidsCgroup.mounts():
        pytest.skip("root ignores RLIMIT_NPROC and no pids cgroup is writable here")
    forks = run(work, "for i in $(seq 100); do sleep 5 & done 2>&1 | head -1; echo done", seconds=8, processes=20)
    assert "done" in forks.output and "fork" in forks.output and forks.seconds < 8
    bomb = run(work, "bomb_x(){ bomb_x|bomb_x& }; bomb_x; sleep 2", seconds=3, processes=20)
    assert "Resource temporarily unavailable" in bomb.output and bomb.seconds < 6
    assert survivors("bomb_x") == []
    memory = run(work, f"{sandbox_python(work)} -c 'bytearray(8 << 30)'", memory_bytes=1 << 30)
    assert memory.exit_code != 0 and "MemoryError" in memory.output
    run(work, "head -c 10G /dev/zero > big", file_bytes=1 << 20, seconds=5)
    assert (work / "big").stat().st_size <= 1 << 20
    flood = run(work, "yes", output_bytes=1 << 16)
    assert flood.output_cut and flood.exit_code is None and len(flood.output) <= 1 << 16 and flood.seconds < 5


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
    assert result.timed_out and not result.sandboxed and survivors("sleep 1000.6") == []
