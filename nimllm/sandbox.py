"""Running shell commands with hard limits, in a bubblewrap sandbox where Linux allows one.

Knows nothing of models: it takes a command and a working folder and returns what the command
printed. Inside the sandbox (`bwrap`) the whole file system is read-only except the working folder
(whose `.git`, and any path the caller protects, stay read-only too) and a private /tmp; the home
folders, /run and the password hashes are hidden; there is no network and no way to open a socket
(seccomp), no capabilities, no new privileges, no setuid bits, and every process dies with the
command or with the caller. Every command, sandboxed or not, has a wall-clock limit, an output limit,
memory and file-size limits and, where a cgroup or RLIMIT_NPROC allows, a process-count limit.

What to run and whether to ask first is decided in `nimllm/shell.py`; this file only runs.
"""
from __future__ import annotations

import os
import platform
import re
import select
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nimllm.config import UserError

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HIDDEN_DIRS = ("/root", "/home", "/run")                      # tmpfs over them: secrets, other users, sockets
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow")                # /dev/null over them
GIT_PROTECTED = (".git", ".git/config", ".git/hooks")         # code that git on the host would run


@dataclass
class Limits:
    seconds: float = 10.0
    output_bytes: int = 1 << 20       # kept of what the command prints; past this it is killed
    memory_bytes: int = 2 << 30       # address space of each process
    file_bytes: int = 256 << 20       # largest file a command may write
    processes: int = 256


@dataclass
class Result:
    command: str
    output: str                       # stdout and stderr as printed, control characters made visible
    exit_code: int | None             # None when the command was killed at a limit
    seconds: float
    sandboxed: bool
    timed_out: bool = False
    output_cut: bool = False          # killed for printing more than the output limit

    def observation(self, max_lines: int = 12, max_chars: int = 400) -> str:
        """What goes back to the model (the same in training and in use): the status line, then the
        head and tail of the output within bounds that fit a small model's context."""
        return f"[{self.status()}]\n{trim(self.output.rstrip(), max_lines, max_chars)}".rstrip()

    def status(self) -> str:
        if self.timed_out:
            return "killed at the time limit"
        if self.output_cut:
            return "killed at the output limit"
        return f"exit {self.exit_code}"


# ---- making output safe to show ------------------------------------------------------------------

ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(data: bytes) -> str:
    """Bytes a command printed as text that cannot drive a terminal: escape sequences removed, other
    control and invisible characters (bidi overrides, zero-width spaces) written out as \\xNN or
    \\uNNNN, invalid UTF-8 replaced."""
    text = ESCAPE_SEQUENCE.sub("", data.decode("utf-8", errors="replace").replace("\r\n", "\n"))
    return INVISIBLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def trim(text: str, max_lines: int, max_chars: int) -> str:
    """The head and the tail of `text` within both bounds, with a line saying how much was cut."""
    lines = text.splitlines()
    if len(lines) <= max_lines and len(text) <= max_chars:
        return text
    head, tail = lines[:max_lines // 2], lines[len(lines) - (max_lines - max_lines // 2):]
    head = trim_chars(head, max_chars // 2, keep_start=True)
    tail = trim_chars(tail, max_chars // 2, keep_start=False)
    cut = len(text) - sum(len(line) + 1 for line in head + tail)
    return "\n".join(head + [f"[... {cut} characters cut ...]"] + tail)


def trim_chars(lines: list[str], budget: int, keep_start: bool) -> list[str]:
    """As many whole lines as fit in budget characters, from the start or from the end; a single
    line longer than the budget keeps its own start or end."""
    kept, used = [], 0
    for line in (lines if keep_start else reversed(lines)):
        if used + len(line) + 1 > budget:
            if not kept:
                kept.append(line[:budget] if keep_start else line[len(line) - budget:])
            break
        kept.append(line)
        used += len(line) + 1
    return kept if keep_start else kept[::-1]


# ---- seccomp: no sockets, no ptrace or io_uring, no setuid or setgid bits ---------------------------

# (AUDIT_ARCH, {syscall number: None to refuse always, or the index of its mode argument, refused
# when the mode carries S_ISUID or S_ISGID: a setuid file left in the folder would outlive the sandbox})
SYSCALLS = {
    "x86_64": (0xC000003E, {41: None, 101: None, 425: None, 426: None, 427: None, 437: None,  # socket ptrace io_uring* openat2
                            90: 1, 91: 1, 268: 2, 452: 2, 2: 2, 257: 3, 85: 1, 133: 1, 259: 2}),  # chmod... mknodat
    "aarch64": (0xC00000B7, {198: None, 117: None, 425: None, 426: None, 427: None, 437: None,
                             52: 1, 53: 2, 452: 2, 56: 3, 33: 2}),
}
LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06      # classic BPF opcodes (with BPF_W|BPF_ABS, BPF_K)
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
X32_BIT, SETID_BITS = 0x40000000, 0o6000


def seccomp_program(machine: str = platform.machine()) -> bytes | None:
    """A compiled filter for `bwrap --seccomp FD` (struct sock_filter[]), None on other machines.
    Jumps name their target ("allow", "deny") or skip a number of instructions."""
    if machine not in SYSCALLS:
        return None
    arch, rules = SYSCALLS[machine]
    prog = [(LD, 0, 0, 4), (JEQ, 0, "deny", arch), (LD, 0, 0, 0)]       # a foreign ABI (i386) is refused whole
    if machine == "x86_64":
        prog.append((JGE, "deny", 0, X32_BIT))                          # and so is x32, which renumbers calls
    for nr, mode_arg in rules.items():
        if mode_arg is None:
            prog.append((JEQ, "deny", 0, nr))
        else:
            prog += [(JEQ, 0, 2, nr), (LD, 0, 0, 16 + 8 * mode_arg), (JSET, "deny", "allow", SETID_BITS)]
    prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]
    target = {"allow": len(prog) - 2, "deny": len(prog) - 1}
    return b"".join(struct.pack("<HBBI", code, *(target[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)), k)
                    for i, (code, jt, jf, k) in enumerate(prog))


# ---- a process-count limit that root cannot ignore ---------------------------------------------------

class PidsCgroup:
    """A fresh cgroup (v1 or v2) with pids.max: root ignores RLIMIT_NPROC, a cgroup it cannot. Also
    finds every process a command left behind, sandboxed or not."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, limit: int) -> PidsCgroup | None:
        for mount in cls.mounts():
            path = mount / f"nimllm-{os.getpid()}-{time.monotonic_ns()}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(limit))
                return cls(path)
            except OSError:
                if path.exists():
                    path.rmdir()
        return None

    @staticmethod
    def mounts() -> list[Path]:
        """Where a pids controller is mounted: a v1 hierarchy, or v2 with pids delegated to children."""
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                mount, fstype, options = Path(parts[4]), parts[parts.index("-") + 1], parts[-1]
                if fstype == "cgroup" and "pids" in options.split(",") or fstype == "cgroup2" and "pids" in \
                        read_or_empty(mount / "cgroup.subtree_control").split():
                    found.append(mount)
        return found

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run from inside the cgroup: a shell enters it, then becomes argv."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def kill_all(self) -> None:
        for _ in range(100):
            pids = (self.path / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        try:
            self.path.rmdir()
        except OSError:
            pass


# ---- running -------------------------------------------------------------------------------------------

def check_folder(folder: Path) -> Path:
    """The working folder, refused where the writable part would hold the system or the user's secrets."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    home = Path.home().resolve()
    if folder == Path("/") or folder == home or folder in home.parents:
        raise UserError(f"the agent may write in its working folder, so it does not work in {folder}: "
                        "cd into a project folder first")
    return folder


class Sandbox:
    """Runs commands in `folder`, in bubblewrap when it works here (`active`), else without a sandbox
    and with only the limits (`reason` says why). `protect` lists paths inside the folder that stay
    read-only (the model folder, say); `.git`, its config and hooks always do."""

    def __init__(self, folder: Path, protect: list[Path] = (), limits: Limits | None = None, use_bwrap: bool = True):
        self.folder, self.limits = check_folder(folder), limits or Limits()
        self.protect = [Path(p) for p in protect]
        self.bwrap = shutil.which("bwrap") if use_bwrap else None
        self.active, self.reason = self.probe()

    def probe(self) -> tuple[bool, str]:
        if platform.system() != "Linux":
            return False, f"no sandbox on {platform.system()}: the agent sandboxes commands on Linux only"
        if not self.bwrap:
            return False, "bubblewrap (bwrap) is not installed (Debian and Ubuntu: apt install bubblewrap)"
        result = self.execute("true", sandboxed=True)
        if result.exit_code != 0:
            first = result.output.strip().splitlines()[:1]
            return False, f"bubblewrap cannot make a sandbox here ({first[0] if first else result.status()})"
        return True, "sandboxed: the working folder is writable, the rest read-only; no network"

    def bwrap_args(self) -> list[str]:
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        home = Path.home().resolve()
        for hidden in (*HIDDEN_DIRS, str(home)):
            if hidden != "/" and Path(hidden).is_dir() and not Path(hidden).is_symlink():
                args += ["--tmpfs", hidden]
        for hidden in HIDDEN_FILES:
            if Path(hidden).exists():
                args += ["--ro-bind", "/dev/null", hidden]
        args += ["--bind", str(self.folder), str(self.folder)]
        for path in [self.folder / p for p in GIT_PROTECTED] + self.protect:
            real = path.resolve()             # a symlink is protected where it leads
            if real.exists() and real.is_relative_to(self.folder):
                args += ["--ro-bind", str(real), str(real)]
        args += ["--chdir", str(self.folder), "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", "/tmp",
                 "--setenv", "LANG", "C.UTF-8", "--setenv", "TERM", "dumb"]
        return args

    def limited(self, command: str) -> list[str]:
        """bash running the command under the resource limits (inherited by all it starts)."""
        lim = self.limits
        ulimits = f"ulimit -c 0 -v {lim.memory_bytes >> 10} -f {lim.file_bytes >> 10}"
        if os.geteuid() != 0:   # root ignores RLIMIT_NPROC; the cgroup limits it
            ulimits += f" -u {lim.processes + user_processes()}"
        return ["bash", "-c", f'{ulimits} || exit 126; exec bash -c "$1"', "bash", command]

    def run(self, command: str) -> Result:
        return self.execute(command, self.active)

    def execute(self, command: str, sandboxed: bool) -> Result:
        start, argv, pass_fds = time.monotonic(), self.limited(command), ()
        if sandboxed:
            argv = self.bwrap_args()
            program = seccomp_program()
            if program:
                fd = os.memfd_create("nimllm-seccomp")
                os.write(fd, program)
                os.lseek(fd, 0, os.SEEK_SET)
                argv += ["--seccomp", str(fd)]
                pass_fds = (fd,)
            argv += ["--", *self.limited(command)]
        cgroup = PidsCgroup.create(self.limits.processes)
        try:
            proc = subprocess.Popen(cgroup.wrap(argv) if cgroup else argv, cwd=self.folder, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=pass_fds)
            try:
                output, timed_out, cut = self.collect(proc, start)
            finally:   # also on Ctrl-C: with bwrap, its pid namespace dies with it
                kill_group(proc)
        finally:
            for fd in pass_fds:
                os.close(fd)
            if cgroup:
                cgroup.kill_all()
        code = None if timed_out or cut else proc.returncode
        return Result(command, visible(output), code, time.monotonic() - start, sandboxed, timed_out, cut)

    def collect(self, proc: subprocess.Popen, start: float) -> tuple[bytes, bool, bool]:
        """Read what the command prints until it ends (its leftovers get a moment to finish writing),
        the time limit passes, or it prints too much; anything still running is then killed."""
        chunks, size, timed_out, cut = [], 0, False, False
        deadline, fd = start + self.limits.seconds, proc.stdout.fileno()
        while True:
            if proc.poll() is not None:
                deadline = min(deadline, time.monotonic() + 0.2)
            ready, _, _ = select.select([fd], [], [], max(0.0, min(deadline - time.monotonic(), 0.05)))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data[:self.limits.output_bytes - size])
                size += len(data)
                if size > self.limits.output_bytes:
                    cut = True
                    break
            elif time.monotonic() >= deadline:
                timed_out = proc.poll() is None
                break
        return b"".join(chunks), timed_out, cut


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the command's process group (it leads one) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stdout.close()


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def user_processes() -> int:
    """Processes of this user now: RLIMIT_NPROC counts them all, so the limit is set above them."""
    uid = os.getuid()
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and stat_uid(p) == uid)


def stat_uid(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None
