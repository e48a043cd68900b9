"""Running shell commands with hard limits, in a bubblewrap sandbox where Linux allows one.

Knows nothing of models: it takes a command and a working folder and returns what the command
printed. Inside the sandbox (`bwrap`) the whole file system is read-only except the working folder
and a small private /tmp. In the working folder every git repository (`.git`, and folders shaped
like a bare repository) stays read-only, and one the command makes is taken apart afterwards; the
home folders, /run, the model folders and root-only secrets are hidden; bwrap itself starts with a
minimal environment, so no variable of the caller reaches the command; there is no network and no
way to open a socket (seccomp), no capabilities, no new privileges, no setuid bits, and every process
dies with the command or with the caller. Every command, sandboxed or not, has a wall-clock limit,
an output limit, per-process memory and file-size limits, a cap on how much the working folder may
grow, and, where a cgroup can be made, a cap on the memory and the number of all its processes.

What the filter warns about is in `nimllm/shell.py`; this file only runs, and holds without it.
"""
from __future__ import annotations

import glob
import os
import platform
import select
import shutil
import signal
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nimllm.config import UserError, nimllm_home
from nimllm.console import printable

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Hidden in the sandbox (a folder becomes an empty read-only tmpfs, a file /dev/null): other users'
# and root's homes, sockets, and secrets only root may read, since the agent may run as root and uid
# 0 reads its own files without any capability. Patterns catch backups such as /etc/shadow-.
HIDDEN = ("/root", "/home", "/run", "/var/cache/debconf", "/etc/ssl/private", "/etc/shadow*", "/etc/gshadow*",
          "/etc/security/opasswd", "/etc/ssh/ssh_host_*key")
GIT_PARTS = ("", "config", "hooks")      # of each repository: what git on the host reads code to run from


@dataclass
class Limits:
    seconds: float = 10.0
    output_bytes: int = 1 << 20       # kept of what the command prints; past this it is killed
    memory_bytes: int = 2 << 30       # address space of each process, and memory of all together (cgroup)
    file_bytes: int = 256 << 20       # largest file a command may write
    folder_bytes: int = 1 << 30       # how much the working folder may grow in one command; past this it is killed
    tmp_bytes: int = 64 << 20         # the private /tmp, and /dev/shm: both live in memory
    processes: int = 256


@dataclass
class Result:
    command: str
    output: str                       # stdout and stderr as printed, control characters made visible
    exit_code: int | None             # None when the command was killed at a limit
    seconds: float
    sandboxed: bool
    killed: str | None = None         # the limit it was killed at: "time", "output" or "folder size"
    notes: tuple[str, ...] = ()       # what else the sandbox did: processes killed for memory, repositories undone

    def observation(self, max_lines: int = 12, max_chars: int = 400) -> str:
        """What goes back to the model (the same in training and in use): the status line, then the
        head and tail of the output within bounds that fit a small model's context."""
        return f"[{self.status()}]\n{trim(self.output.rstrip(), max_lines, max_chars)}".rstrip()

    def status(self) -> str:
        first = f"killed at the {self.killed} limit" if self.killed else f"exit {self.exit_code}"
        return "; ".join((first, *self.notes))


# ---- making output safe to show ------------------------------------------------------------------

def visible(data: bytes) -> str:
    """Bytes a command printed as text that cannot drive a terminal (`printable`), invalid UTF-8 replaced."""
    return printable(data.decode("utf-8", errors="replace"))


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


# ---- cgroups: the number and the memory of all of a command's processes -----------------------------

CGROUP_LIMITS = (("pids.max", "processes"),                      # each file that the new cgroup has is set
                 ("memory.limit_in_bytes", "memory_bytes"), ("memory.memsw.limit_in_bytes", "memory_bytes"),  # v1
                 ("memory.max", "memory_bytes"), ("memory.swap.max", None))                                    # v2
ENTER = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'


class Cgroups:
    """Fresh cgroups for one command, under the caller's own: one per v1 hierarchy of pids or memory,
    or one in v2 where those are delegated. They cap what no rlimit can: root ignores RLIMIT_NPROC,
    and RLIMIT_AS is per process, so four processes could take four times as much. Also lists every
    process a command left behind, sandboxed or not. Empty where no cgroup can be made."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    @classmethod
    def create(cls, limits: Limits) -> Cgroups:
        made = []
        for base in hierarchies():
            path = base / f"nimllm-{os.getpid()}-{time.monotonic_ns()}"
            try:
                path.mkdir()
                for name, limit in CGROUP_LIMITS:
                    if (path / name).exists():
                        (path / name).write_text(str(getattr(limits, limit) if limit else 0))
                made.append(path)
            except OSError:
                remove_cgroup(path)
        return cls(made)

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run from inside the cgroups: a shell enters each, then becomes argv."""
        if not self.paths:
            return argv
        return ["/bin/sh", "-c", ENTER, "sh", *(str(p / "cgroup.procs") for p in self.paths), "--", *argv]

    def pids(self) -> set[int]:
        return {int(pid) for p in self.paths for pid in read_or_empty(p / "cgroup.procs").split()}

    def close(self) -> list[str]:
        """Kill every process left in them and remove them; what the memory limit did, if anything."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        killed = sum(oom_kills(p) for p in self.paths)
        for path in self.paths:
            remove_cgroup(path)
        return [f"{killed} process{'es' * (killed > 1)} killed at the memory limit"] if killed else []


def hierarchies() -> list[Path]:
    """Where this process's own cgroups are, in each hierarchy that can limit processes or memory."""
    own = [line.split(":", 2) for line in read_or_empty(Path("/proc/self/cgroup")).splitlines()]
    found = []
    for line in read_or_empty(Path("/proc/self/mountinfo")).splitlines():
        parts = line.split()
        root, mount, fstype = parts[3].rstrip("/"), Path(parts[4]), parts[parts.index("-") + 1]
        for _, controllers, path in own:
            names = set(controllers.split(","))
            v1 = fstype == "cgroup" and {"pids", "memory"} & names and names <= set(parts[-1].split(","))
            v2 = fstype == "cgroup2" and controllers == ""
            if (v1 or v2) and (path + "/").startswith(root + "/"):
                base = mount / path[len(root):].lstrip("/")
                if v1 or {"pids", "memory"} & set(read_or_empty(base / "cgroup.subtree_control").split()):
                    found.append(base)
    return found


def oom_kills(path: Path) -> int:
    """Processes the kernel killed in this cgroup for passing its memory limit (v1 or v2)."""
    for name in ("memory.oom_control", "memory.events"):
        for line in read_or_empty(path / name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def remove_cgroup(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---- what the working folder holds: its size and its git repositories --------------------------------

@dataclass
class Scan:
    bytes: int                   # allocated on disk, each file once however many names it has
    repositories: set[Path]      # `.git` entries, and folders git would take for a bare repository


def scan(folder: Path) -> Scan:
    """Walk the folder without following links; what vanishes during the walk is let go."""
    sizes, repositories, pending = {}, set(), [str(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        if current != str(folder) and bare_repository(entries):
            repositories.add(Path(current))
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            sizes[st.st_dev, st.st_ino] = st.st_blocks * 512
            if entry.name.casefold() == ".git":   # .GIT is .git on a case-insensitive file system
                repositories.add(Path(entry.path))
            if stat.S_ISDIR(st.st_mode):
                pending.append(entry.path)
    return Scan(sum(sizes.values()), repositories)


def bare_repository(entries: list[os.DirEntry]) -> bool:
    """Whether git would take this folder for a repository: a HEAD file, and objects and refs folders
    or a commondir (a worktree's)."""
    kinds = {e.name: e.is_dir() for e in entries if e.name in ("HEAD", "objects", "refs", "commondir")}
    return kinds.get("HEAD") is False and (bool(kinds.get("objects") and kinds.get("refs")) or "commondir" in kinds)


def undo_new_repositories(folder: Path, before: set[Path]) -> list[str]:
    """Take apart each repository the command made, so that git on the host never reads its config
    or hooks: a new `.git` is removed whole; a folder made to look like a bare repository loses its
    HEAD (without it git does not take it for one, and nothing else in it is touched)."""
    notes, undone = [], []
    for path in sorted(scan(folder).repositories - before):
        if any(path.is_relative_to(u) for u in undone):
            continue
        target = path if path.name.casefold() == ".git" else path / "HEAD"
        name = target.relative_to(folder)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        except OSError as e:   # said, not raised: the user must hear of it before running git there
            notes.append(f"could NOT remove {name} ({e.strerror}): delete it before you run git in that folder")
            continue
        undone.append(path)
        notes.append(f"removed {name}: commands may not make git repositories here")
    return notes


def deleted_open_bytes(pids: set[int], device: int) -> int:
    """Disk held by files on the folder's device that the processes deleted but keep open: out of the
    walk's sight, they would otherwise grow unchecked until the command ends."""
    held = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == device:
                held[st.st_ino] = st.st_blocks * 512
    return sum(held.values())


class Growth:
    """Whether the working folder grew past the limit since the command started. A walk of a big
    folder takes a while, so it is checked every 0.02 s or, in a big folder, seldom enough that the
    walks take at most a fifth of the time."""

    def __init__(self, folder: Path, start_bytes: int, cgroups: Cgroups, limit: int):
        self.folder, self.start_bytes, self.cgroups, self.limit = folder, start_bytes, cgroups, limit
        self.device, self.next = folder.stat().st_dev, 0.0

    def exceeded(self, now_or_never: bool = False) -> bool:
        now = time.monotonic()
        if now < self.next and not now_or_never:
            return False
        size = scan(self.folder).bytes + deleted_open_bytes(self.cgroups.pids(), self.device)
        took = time.monotonic() - now
        self.next = now + max(0.02, 5 * took)
        return size - self.start_bytes > self.limit


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


def hidden_paths(extra: list[Path]) -> tuple[list[Path], list[Path]]:
    """The folders and the files to hide, where they really are (a symlink is hidden where it leads)."""
    patterns = [*HIDDEN, *(glob.escape(str(p)) for p in (Path.home(), *extra))]
    paths = {Path(p).resolve() for pattern in patterns for p in glob.glob(pattern)} - {Path("/")}
    return sorted(p for p in paths if p.is_dir()), sorted(p for p in paths if not p.is_dir())


def protected(repositories: set[Path], folder: Path) -> list[Path]:
    """What git reads code from in each repository, where it really is, when that is in the folder
    (outside it everything is read-only anyway)."""
    paths = {(repo / part).resolve() for repo in repositories for part in GIT_PARTS}
    return sorted(p for p in paths if p.exists() and p.is_relative_to(folder))


def environment(sandboxed: bool) -> dict[str, str]:
    """All a command (and bwrap, whose environment its process 1 shows in /proc/1/environ) gets: no
    variable of the caller, so no API key or token."""
    home = "/tmp" if sandboxed else str(Path.home())
    return {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", "TERM": "dumb"}


class Sandbox:
    """Runs commands in `folder`, in bubblewrap when it works here (`active`), else without a sandbox
    and with only the limits (`reason` says why). `hide` lists folders the command must not see (the
    model folder, say), besides $NIMLLM_HOME and those of HIDDEN."""

    def __init__(self, folder: Path, hide: list[Path] = (), limits: Limits | None = None, use_bwrap: bool = True):
        self.folder, self.limits = check_folder(folder), limits or Limits()
        self.hide = [Path(p).expanduser().resolve() for p in (*hide, nimllm_home())]
        for hidden in self.hide:
            if self.folder.is_relative_to(hidden):
                raise UserError(f"{self.folder} is inside {hidden}, which commands may not see: "
                                "cd into a project folder first")
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
        return True, ("sandboxed: commands may change the working folder but not its .git (a repository they make "
                      "is taken apart); the rest is read-only; no network")

    def bwrap_args(self, repositories: set[Path]) -> list[str]:
        hidden_dirs, hidden_files = hidden_paths(self.hide)
        mounts = [(d, ["--tmpfs", str(d)]) for d in hidden_dirs]
        mounts += [(f, ["--ro-bind", "/dev/null", str(f)]) for f in hidden_files]
        mounts += [(Path(d), ["--size", str(self.limits.tmp_bytes), "--tmpfs", d]) for d in ("/tmp", "/dev/shm")]
        mounts += [(self.folder, ["--bind", str(self.folder), str(self.folder)])]
        mounts += [(p, ["--ro-bind", str(p), str(p)]) for p in protected(repositories, self.folder)]
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for _, mount in sorted(mounts, key=lambda m: len(m[0].parts)):   # a mount covers those below it: parents first
            args += mount
        for folder in (*hidden_dirs, Path("/dev")):   # read-only last: the mounts inside them needed mount points
            args += ["--remount-ro", str(folder)]
        return args + ["--chdir", str(self.folder)]

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
        start, before = time.monotonic(), scan(self.folder)
        argv, pass_fds = self.limited(command), ()
        if sandboxed:
            argv = self.bwrap_args(before.repositories)
            program = seccomp_program()
            if program:
                fd = os.memfd_create("nimllm-seccomp")
                os.write(fd, program)
                os.lseek(fd, 0, os.SEEK_SET)
                argv += ["--seccomp", str(fd)]
                pass_fds = (fd,)
            argv += ["--", *self.limited(command)]
        cgroups = Cgroups.create(self.limits)
        try:
            proc = subprocess.Popen(cgroups.wrap(argv), cwd=self.folder, env=environment(sandboxed),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=pass_fds)
            try:
                output, killed = self.collect(proc, start, Growth(self.folder, before.bytes, cgroups,
                                                                  self.limits.folder_bytes))
            finally:   # also on Ctrl-C: with bwrap, its pid namespace dies with it
                kill_group(proc)
        finally:
            for fd in pass_fds:
                os.close(fd)
            notes = cgroups.close()
            if sandboxed:   # also on Ctrl-C: no repository made so far may outlive the command
                notes += undo_new_repositories(self.folder, before.repositories)
        code = None if killed else proc.returncode
        return Result(command, visible(output), code, time.monotonic() - start, sandboxed, killed, tuple(notes))

    def collect(self, proc: subprocess.Popen, start: float, growth: Growth) -> tuple[bytes, str | None]:
        """Read what the command prints until it ends (its leftovers get a moment to finish writing) or
        passes a limit: the time, the output, the folder's growth; the limit passed, or None."""
        chunks, size, killed = [], 0, None
        deadline, fd = start + self.limits.seconds, proc.stdout.fileno()
        while killed is None:
            if proc.poll() is not None:
                deadline = min(deadline, time.monotonic() + 0.2)
            ready, _, _ = select.select([fd], [], [], max(0.0, min(deadline - time.monotonic(), 0.05)))
            if ready:
                data = os.read(fd, 65536)
                if not data:   # the output is closed, and the command is about to end: let it (else its
                    wait_a_moment(proc, deadline)   # exit status is the kill's, -9, however it ended)
                    break
                chunks.append(data[:self.limits.output_bytes - size])
                size += len(data)
                killed = "output" if size > self.limits.output_bytes else None
            elif time.monotonic() >= deadline:
                killed = "time" if proc.poll() is None else None
                break
            if killed is None and growth.exceeded():
                killed = "folder size"
        if killed is None and growth.exceeded(now_or_never=True):   # a burst that ended between two checks
            killed = "folder size"
        return b"".join(chunks), killed


def wait_a_moment(proc: subprocess.Popen, deadline: float) -> None:
    """Give the command up to 0.2 s (never past its deadline) to exit by itself."""
    try:
        proc.wait(timeout=max(0.0, min(deadline - time.monotonic(), 0.2)))
    except subprocess.TimeoutExpired:
        pass


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
