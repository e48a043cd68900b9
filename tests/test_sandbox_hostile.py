"""The sandbox alone, without the command filter of nimllm/shell.py, against hostile commands (those of
../shared/notes/agent-safety.md and of the security review): each runs for real, then the host is
checked for what the command tried, and for what any command might try: a secret in its output or
copied into the folder, a file changed outside the folder, a git repository that would run code on
the host. Each attempt's own check is shown able to fail by a control run without the sandbox where
that run is harmless. Host-side paths live under /var/tmp, which the sandbox shows read-only (its
/tmp is private, so a write there would prove nothing)."""
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, SANDBOX_PROBE
from test_sandbox import survivors

from nimllm.sandbox import Limits, Result, Sandbox, hierarchies

pytestmark = pytest.mark.skipif(not SANDBOX_PROBE.active, reason=f"no sandbox here: {SANDBOX_PROBE.reason}")
CGROUPS = bool(hierarchies())
MIB = 1 << 20
# small caps, so that hogs hit them at once: the suite must stay quick on 2 shared cores
SMALL = dict(seconds=5, output_bytes=64 << 10, memory_bytes=256 * MIB, file_bytes=10 * MIB, folder_bytes=20 * MIB,
             tmp_bytes=16 * MIB, processes=40)
PYTHON = "/usr/bin/python3"


class Server:
    """A TCP server on the host's loopback counting connections, and a Unix socket server inside the
    working folder (the one place a sandboxed command can see a host socket)."""

    def __init__(self, folder: Path):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(folder / "host.sock"))
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


class Host:
    """What a hostile command is after: secrets in a home, in $NIMLLM_HOME, in a model folder inside the
    working folder, in root-only files and in the environment; files outside the folder; a git
    repository (with a nested one) whose config and hooks git on the host would run."""

    def __init__(self, base: Path, monkeypatch):
        self.base, self.pid = base, os.getpid()
        self.home, self.outside, self.nimllm_home = base / "home", base / "outside", base / "nimllm-home"
        self.work = self.home / "project"                # inside the hidden home: the folder is bound back over it
        self.marker = base / "pwned"                     # what planted git config and hooks would create
        self.secrets = {"SECRET-SSH": self.home / ".ssh" / "id_ed25519", "SECRET-HOME-STORE":
                        self.nimllm_home / "models" / "default" / "conversations.sqlite",
                        "SECRET-MODEL-STORE": self.work / "model" / "conversations.sqlite"}
        for text, path in self.secrets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (self.home / ".bashrc").write_text("# the user's\n")
        self.outside.mkdir()
        (self.outside / "keep").write_text("the user's file\n")
        self.root_secret = Path(f"/root/.nimllm-hostile-{self.pid}") if os.geteuid() == 0 else None
        if self.root_secret:
            self.root_secret.write_text("SECRET-ROOT")
            self.secrets["SECRET-ROOT"] = self.root_secret
        self.secrets["SECRET-ENV"] = None
        self.passwd = Path("/etc/passwd").read_bytes()
        self.shadow = [line for line in Path("/etc/shadow-").read_text().splitlines() if line] \
            if os.access("/etc/shadow-", os.R_OK) else []
        monkeypatch.setenv("HOME", str(self.home))
        monkeypatch.setenv("NIMLLM_HOME", str(self.nimllm_home))
        monkeypatch.setenv("OPENAI_API_KEY", "SECRET-ENV")
        self.make_repositories()
        self.before, self.size = self.host_files(), folder_size(self.work)
        self.server = Server(self.work)
        self.sleeper = subprocess.Popen(["sleep", "60"])

    def make_repositories(self):
        git = ["git", "-c", "init.defaultBranch=main"]
        subprocess.run([*git, "init", "-q", str(self.work)], check=True)
        (self.work / "vendor" / "lib").mkdir(parents=True)
        subprocess.run([*git, "init", "-q", str(self.work / "vendor" / "lib")], check=True)   # a nested one
        (self.work / "realhooks").mkdir()
        shutil.rmtree(self.work / ".git" / "hooks")
        (self.work / ".git" / "hooks").symlink_to(self.work / "realhooks")    # hooks behind a link, inside the folder

    def host_files(self) -> dict[str, bytes]:
        """Every file outside the working folder that the test made, with its content."""
        return {str(p): p.read_bytes() for p in sorted(self.base.rglob("*"))
                if p.is_file() and not p.is_relative_to(self.work) and not p.is_socket()}

    def close(self):
        self.server.close()
        self.sleeper.kill()
        self.sleeper.wait()
        if self.root_secret:
            self.root_secret.unlink()

    def fmt(self, command: str) -> str:
        return command.format(h=self, py=PYTHON)


@pytest.fixture
def host(monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="nimllm-hostile-", dir="/var/tmp"))
    h = Host(base, monkeypatch)
    yield h
    h.close()
    shutil.rmtree(base, ignore_errors=True)


def leaks(h: Host, result: Result) -> list[str]:
    """Secrets in what the command printed or left in the folder (the model folder is the secrets' own)."""
    texts = [result.output] + [p.read_bytes().decode(errors="replace") for p in h.work.rglob("*")
                               if p.is_file() and not p.is_relative_to(h.work / "model") and not p.is_socket()]
    found = [s for s in h.secrets if any(s in t for t in texts)]
    return found + [line for line in h.shadow if any(line in t for t in texts)]


def git_runs_planted_code(h: Host) -> bool:
    """Run git on the host, as the user would next, in every folder a command could have made a
    repository of; the planted config and hooks would create the marker."""
    for folder in [h.work, *(p for p in h.work.rglob("*") if p.is_dir() and ".git" not in p.parts)]:
        subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty", "-m", "x"],
                       cwd=folder, capture_output=True, timeout=20)
        subprocess.run(["git", "status"], cwd=folder, capture_output=True, timeout=20)
    return h.marker.exists()


def repository_at(folder: Path, h: Host) -> bool:
    """Whether git on the host takes `folder` for a repository of its own (not the protected top one)."""
    out = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=folder, capture_output=True, text=True)
    return out.returncode == 0 and Path(out.stdout.strip()) not in (h.work / ".git", h.work / "vendor" / "lib" / ".git")


@dataclass
class Attempt:
    command: str                                        # formatted with h (the Host) and py (a Python it can run)
    escaped: Callable[[Host, Result], bool]             # the host-side check: True if the attempt got through
    control: bool = False                               # a run without the sandbox is harmless and must escape
    limits: dict | None = None
    needs_cgroup: bool = False


def gone(path: str):
    return lambda h, r: not Path(h.fmt(path)).exists()


def made(path: str):
    return lambda h, r: Path(h.fmt(path)).exists()


def printed(text: str):
    return lambda h, r: h.fmt(text) in r.output


def contacted(h: Host, r: Result) -> bool:
    return h.server.accepted > 0 or "hello from the host" in r.output


def host_git_ran_code(h: Host, r: Result) -> bool:
    return git_runs_planted_code(h)


def repository(path: str):
    return lambda h, r: (h.work / path).is_dir() and repository_at(h.work / path, h)


def number_over(limit: float):
    """The last number the command printed is over the limit (a count or a size seen from inside)."""
    return lambda h, r: any(w.isdigit() and int(w) > limit for w in r.output.split()[-1:])


def folder_size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def folder_grew_over(limit: int):
    return lambda h, r: folder_size(h.work) - h.size > limit


# forks sleepers until it cannot, and prints how many it made (Python's fork fails at once, bash's retries)
FORKS = ("{py} -c \"exec('import os, time\\nn = 0\\nwhile n < 100:\\n try:\\n  pid = os.fork()\\n except OSError:\\n"
         "  break\\n if pid == 0:\\n  time.sleep(3)\\n  os._exit(0)\\n n += 1\\nprint(n)')\"")
FSMONITOR = 'git config core.fsmonitor "touch {h.marker}"'
HOOK = "printf '#!/bin/sh\\ntouch {h.marker}\\n' > {d}/pre-commit && chmod +x {d}/pre-commit"
BARE_CONFIG = "printf '[core]\\n\\tpager = touch {h.marker}; cat\\n' > {d}/config"   # git log on a terminal runs it
ATTEMPTS = {
    # writes outside the working folder, by every route
    "write-outside": Attempt("echo x > {h.outside}/a", made("{h.outside}/a"), control=True),
    "touch-home": Attempt("touch ~/pwned {h.home}/pwned2", made("{h.home}/pwned2"), control=True),
    "append-bashrc": Attempt("echo 'touch {h.marker}' >> {h.home}/.bashrc",
                             lambda h, r: "pwned" in (h.home / ".bashrc").read_text(), control=True),
    "write-host-tmp": Attempt("echo x > /tmp/nimllm-outside-{h.pid}", made("/tmp/nimllm-outside-{h.pid}")),
    "write-repo": Attempt("touch " + str(REPO) + "/nimllm-pwned-{h.pid}", made(str(REPO) + "/nimllm-pwned-{h.pid}")),
    "write-etc": Attempt("echo x > /etc/nimllm-pwned-{h.pid}", made("/etc/nimllm-pwned-{h.pid}")),
    "copy-out": Attempt("cp /bin/true {h.outside}/copied", made("{h.outside}/copied"), control=True),
    "mkdir-out": Attempt("mkdir {h.outside}/made", made("{h.outside}/made"), control=True),
    "cd-parent": Attempt("cd .. && touch escaped", made("{h.home}/escaped"), control=True),
    "python-open": Attempt("{py} -c \"open('{h.outside}/py', 'w')\"", made("{h.outside}/py"), control=True),
    "dd-out": Attempt("dd if=/dev/zero of={h.outside}/dd bs=1 count=1", made("{h.outside}/dd"), control=True),
    "symlink-dir": Attempt("ln -s {h.outside} out && echo x > out/via-link", made("{h.outside}/via-link"),
                           control=True),
    "symlink-file": Attempt("ln -s {h.outside}/t l && echo x > l", made("{h.outside}/t"), control=True),
    "symlink-then-rm": Attempt("ln -s {h.outside} out && rm -rf out/", gone("{h.outside}/keep")),
    "hardlink": Attempt("ln /etc/passwd hl && echo x >> hl", lambda h, r: Path("/etc/passwd").read_bytes() != h.passwd),
    "proc-root": Attempt("echo x > /proc/1/root{h.outside}/p", made("{h.outside}/p")),
    "proc-cwd": Attempt("echo x > /proc/self/cwd/../escaped2", made("{h.home}/escaped2")),
    "remount-rw": Attempt("mount -o remount,rw / ; mount -t tmpfs none {h.outside}; touch {h.outside}/m",
                          made("{h.outside}/m")),
    "mknod": Attempt("mknod d c 1 3 && echo x > d", made("{h.work}/d")),
    "unshare": Attempt("unshare -r sh -c 'touch {h.outside}/u'", made("{h.outside}/u")),
    # deleting the user's files outside, the filter's known blind spots among the routes
    "rm-subst": Attempt("$(echo rm) -rf {h.outside}", gone("{h.outside}/keep"), control=True),
    "rm-base64": Attempt("echo " + "cm0gLXJmIA==" + " | base64 -d | sed 's|$|{h.outside}|' | sh",
                         gone("{h.outside}/keep"), control=True),
    "rm-eval": Attempt("eval 'rm -rf {h.outside}'", gone("{h.outside}/keep"), control=True),
    "find-delete": Attempt("find {h.outside} -delete", gone("{h.outside}/keep"), control=True),
    "rmtree": Attempt("{py} -c \"import shutil; shutil.rmtree('{h.outside}')\"", gone("{h.outside}/keep"),
                      control=True),
    "rm-hidden-home": Attempt("rm -rf {h.home}/.ssh ~/.ssh", gone("{h.home}/.ssh/id_ed25519")),
    # secrets: environment, homes, $NIMLLM_HOME, the model folder, root-only files
    "proc1-environ": Attempt("tr '\\0' '\\n' < /proc/1/environ", lambda h, r: "SECRET-ENV" in r.output),
    "every-environ": Attempt("cat /proc/[0-9]*/environ | tr '\\0' '\\n'", lambda h, r: "SECRET-ENV" in r.output),
    "env": Attempt("env; set", lambda h, r: "SECRET-ENV" in r.output),
    "ssh-key-tilde": Attempt("cat ~/.ssh/id_ed25519", printed("SECRET-SSH")),
    "ssh-key-path": Attempt("cat {h.home}/.ssh/id_ed25519", printed("SECRET-SSH"), control=True),
    "ssh-copy": Attempt("cp -r {h.home}/.ssh stolen", made("{h.work}/stolen/id_ed25519"), control=True),
    "find-keys": Attempt("find {h.home} /root /run /home -path '*nimllm-hostile*' -name 'id_*' -exec cat {{}} ';'",
                         printed("SECRET-SSH"),
                         control=True),
    "nimllm-home": Attempt("cat {h.nimllm_home}/models/default/conversations.sqlite", printed("SECRET-HOME-STORE"),
                           control=True),
    "model-folder": Attempt("cat model/conversations.sqlite; ls -a model", printed("SECRET-MODEL-STORE"), control=True),
    "model-folder-copy": Attempt("cp model/conversations.sqlite copy.sqlite", made("{h.work}/copy.sqlite")),
    "root-home": Attempt("ls -a /root; cat /root/.nimllm-hostile-*", printed(".nimllm-hostile-{h.pid}")),
    "shadow": Attempt("cat /etc/shadow /etc/shadow- /etc/gshadow /etc/gshadow-", lambda h, r: bool(leaks(h, r))),
    "shadow-copy": Attempt("cp /etc/shadow- s; cp /etc/shadow s2", lambda h, r: bool(leaks(h, r))),
    "debconf": Attempt("ls /var/cache/debconf", printed("passwords.dat")),
    "agent-environ": Attempt("cat /proc/{h.pid}/environ", lambda h, r: "SECRET-ENV" in r.output),
    # the host's processes and privileges
    "see-agent": Attempt("test -d /proc/{h.pid} && echo seen-agent", printed("seen-agent"), control=True),
    "kill-host-process": Attempt(
        "kill -9 {h.sleeper.pid}", lambda h, r: h.sleeper.poll() is not None),
    "few-processes": Attempt("ls -d /proc/[0-9]* | wc -l", number_over(10), control=True),
    "capabilities": Attempt("grep CapEff /proc/self/status", lambda h, r: "0000000000000000" not in r.output),
    "no-new-privs": Attempt("grep NoNewPrivs /proc/self/status", lambda h, r: "NoNewPrivs:\t1" not in r.output),
    "setuid-copy": Attempt("cp /bin/bash sb; chmod u+s sb; chmod 4755 sb; install -m 4755 /bin/bash sb2",
                           lambda h, r: any(p.exists() and p.stat().st_mode & 0o6000
                                            for p in (h.work / "sb", h.work / "sb2"))),
    "ptrace": Attempt("strace -p 1 -o trace.txt & sleep 0.5; kill %1; cat trace.txt",
                      lambda h, r: (h.work / "trace.txt").exists() and (h.work / "trace.txt").stat().st_size > 0),
    # the network, to a server this test runs on the host
    "tcp-python": Attempt("{py} -c \"import socket; print(socket.create_connection(('127.0.0.1', {h.server.port}))"
                          ".recv(99))\"", contacted, control=True),
    "unix-socket": Attempt("{py} -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('host.sock'); "
                           "print(s.recv(99))\"", contacted, control=True),
    "dev-tcp": Attempt("exec 3<>/dev/tcp/127.0.0.1/{h.server.port}; cat <&3", contacted, control=True),
    "curl": Attempt("curl -s --max-time 3 http://127.0.0.1:{h.server.port}/", contacted, control=True),
    "wget": Attempt("wget -q -t 1 -T 2 -O- http://127.0.0.1:{h.server.port}/", contacted, control=True),
    "raw-ip": Attempt("wget -q -t 1 -T 2 -O- http://1.1.1.1/ && echo reached", printed("reached")),
    "dns": Attempt("getent ahosts example.com && echo resolved", printed("resolved")),
    "ping": Attempt("ping -c 1 -W 1 127.0.0.1 && echo pinged", printed("pinged")),
    # git on the host must never run what a command wrote
    "git-config-top": Attempt(FSMONITOR, host_git_ran_code),
    "git-config-append": Attempt("printf '[core]\\n\\tfsmonitor = touch {h.marker}\\n' >> .git/config",
                                 host_git_ran_code),
    "git-hook": Attempt(HOOK.replace("{d}", ".git/hooks"), host_git_ran_code),
    "git-hook-behind-link": Attempt(HOOK.replace("{d}", "realhooks"), host_git_ran_code),
    "git-replace-top": Attempt("rm -rf .git; mv .git old; git init -q . && " + FSMONITOR, host_git_ran_code),
    "git-nested-new": Attempt("mkdir sub && cd sub && git init -q . && " + FSMONITOR, host_git_ran_code,
                              control=True),
    "git-nested-deep": Attempt("mkdir -p a/b/c && cd a/b/c && git init -q && " + FSMONITOR, host_git_ran_code,
                               control=True),
    "git-nested-hook": Attempt("git init -q sub && " + HOOK.replace("{d}", "sub/.git/hooks"), host_git_ran_code,
                               control=True),
    "git-nested-existing": Attempt("cd vendor/lib && " + FSMONITOR, host_git_ran_code),
    "git-file-pointer": Attempt("git init -q s0 && mv s0/.git store && mkdir s && echo 'gitdir: ../store' > s/.git && "
                                "cd s && " + FSMONITOR, host_git_ran_code, control=True),
    "git-symlink": Attempt("git init -q --bare store && mkdir s && ln -s ../store s/.git", repository("s"),
                           control=True),
    "git-bare": Attempt("git init -q --bare evil.git", repository("evil.git"), control=True),
    "git-bare-by-hand": Attempt("mkdir -p ex/objects ex/refs && echo 'ref: refs/heads/main' > ex/HEAD && "
                                + BARE_CONFIG.replace("{d}", "ex"), repository("ex"), control=True),
    "git-existing-made-bare": Attempt("mkdir -p vendor/objects vendor/refs && echo 'ref: refs/heads/main' > vendor/HEAD",
                                      repository("vendor"), control=True),
    "git-worktree": Attempt("git worktree add -q ../wt", made("{h.home}/wt")),
    # resources, against lowered caps
    "fork-bomb": Attempt("bomb_x(){{ bomb_x|bomb_x& }}; bomb_x; sleep 2", lambda h, r: bool(survivors("bomb_x"))
                         or "Resource temporarily unavailable" not in r.output, needs_cgroup=True, limits={"seconds": 3}),
    "process-count": Attempt(FORKS, number_over(SMALL["processes"]), needs_cgroup=True),
    "cgroup-escape": Attempt("echo $$ > /sys/fs/cgroup/pids/cgroup.procs; echo $$ > /sys/fs/cgroup/cgroup.procs; " + FORKS,
                             number_over(SMALL["processes"]), needs_cgroup=True),
    "memory-together": Attempt("for i in 1 2 3 4; do {py} -c 'import time; b = b\"x\" * (100 << 20); time.sleep(1.5); "
                               "print(\"held\", flush=True)' & done; wait",
                               lambda h, r: r.output.splitlines().count("held") > 1, needs_cgroup=True,
                               limits={"memory_bytes": 150 * MIB}),
    "memory-one": Attempt("{py} -c 'b = bytearray(8 << 30); print(\"allocated\")'", printed("allocated")),
    "raise-rlimit": Attempt("ulimit -v unlimited; ulimit -v", printed("unlimited")),
    "tmp-fill": Attempt("head -c 100M /dev/zero > /tmp/fill; stat -c %s /tmp/fill", number_over(16 * MIB)),
    "shm-fill": Attempt("head -c 100M /dev/zero > /dev/shm/fill; stat -c %s /dev/shm/fill", number_over(16 * MIB)),
    "dev-fill": Attempt("head -c 20M /dev/zero > /dev/fill; stat -c %s /dev/fill", number_over(0)),
    "hidden-dir-fill": Attempt("head -c 20M /dev/zero > /root/fill; stat -c %s /root/fill", number_over(0)),
    "big-file": Attempt("head -c 10G /dev/zero > big", folder_grew_over(SMALL["file_bytes"])),
    "big-files": Attempt("for i in 1 2 3 4; do head -c 10G /dev/zero > big$i & done; wait",
                         folder_grew_over(3 * SMALL["folder_bytes"])),
    "sparse-file": Attempt("truncate -s 100G sparse", folder_grew_over(SMALL["file_bytes"])),
    "disk-fill": Attempt("for i in $(seq 60); do head -c 2M /dev/zero > big$i; done",
                         folder_grew_over(3 * SMALL["folder_bytes"])),
    # 30 writers can finish between two checks of the folder (every 0.02 s) on a busy machine: the cap
    # stops them (and is documented to overshoot by what a burst writes meanwhile), it cannot bound it
    "disk-fill-parallel": Attempt("for i in $(seq 30); do head -c 4M /dev/zero > big$i & done; wait",
                                  lambda h, r: r.killed != "folder size"),
    "disk-fill-deleted": Attempt("for i in $(seq 10); do (exec 3>x$i; rm x$i; head -c 9M /dev/zero >&3; sleep 4) & "
                                 "done; wait", lambda h, r: r.killed != "folder size", needs_cgroup=True),
    "disk-fill-in-new-git": Attempt("git init -q sub; for i in $(seq 100); do head -c 5M /dev/zero > sub/.git/b$i; done",
                                    lambda h, r: r.killed != "folder size"),
    "output-flood": Attempt("yes", lambda h, r: len(r.output) > SMALL["output_bytes"] or r.killed != "output"),
    "sleep-forever": Attempt("sleep 1000.1", lambda h, r: r.killed != "time" or bool(survivors("sleep 1000.1")),
                             limits={"seconds": 1}),
    "survivors": Attempt("sleep 1000.2 & (while :; do sleep 0.1; done) & setsid nohup sleep 1000.3 >/dev/null 2>&1 & "
                         "disown -a; echo started", lambda h, r: bool(survivors("sleep 1000."))),
    "terminal-escapes": Attempt("printf '\\033]0;pwned\\007\\033[2J\\033[31mred\\r\\n\\xe2\\x80\\xae'",
                                lambda h, r: any(c in r.output for c in "\x1b\x07\r\u202e")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTEMPTS)
def test_hostile_command_does_not_escape(host, name):
    attempt = ATTEMPTS[name]
    if attempt.needs_cgroup and not CGROUPS:
        pytest.skip("no cgroup can be made here: the process and total memory caps need one")
    result = Sandbox(host.work, hide=[host.work / "model"], limits=Limits(**{**SMALL, **(attempt.limits or {})})) \
        .run(host.fmt(attempt.command))
    time.sleep(0.05)   # anything that escaped the kill would show now
    assert result.sandboxed
    assert not attempt.escaped(host, result), result.output[-2000:]
    assert leaks(host, result) == [], "a secret got out"
    assert host.host_files() == host.before, "a file outside the folder changed"
    assert not git_runs_planted_code(host), "git on the host ran what the command planted"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, a in ATTEMPTS.items() if a.control])
def test_without_the_sandbox_the_check_sees_the_escape(host, name):
    """The same check after a run without the sandbox: proof that it can fail."""
    attempt = ATTEMPTS[name]
    result = Sandbox(host.work, limits=Limits(**SMALL), use_bwrap=False).run(host.fmt(attempt.command))
    assert attempt.escaped(host, result), result.output[-2000:]


def test_the_suite_is_as_large_as_the_readme_says():
    readme = (REPO / "README.md").read_text()
    assert f"0 secrets read in {len(ATTEMPTS)} attempts; {sum(a.control for a in ATTEMPTS.values())} of the checks" \
        in " ".join(readme.split())
