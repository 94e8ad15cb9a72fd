"""``iommu-sim exec``: start the program under the filter and serve it until every one of
its processes is gone (docs/exec.rst)."""

from __future__ import annotations

import errno
import os
import platform
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from iommu_sim.exec.seccomp import Listener, install_filter, notif_sizes, notify_filter, pidfd_open
from iommu_sim.exec.supervisor import NR, Supervisor


class HostUnsupported(Exception):
    """The host lacks something exec needs (the message says what)."""


def check_host() -> None:
    """Fail early, with one line, when exec cannot work here."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise HostUnsupported(f"exec runs x86-64 Linux programs; this host is "
                              f"{sys.platform}/{platform.machine()}")
    try:
        notif_sizes()
    except OSError as e:
        raise HostUnsupported(f"seccomp user notification is not available ({e.strerror}); "
                              "Linux 5.9 or newer with CONFIG_SECCOMP_FILTER is needed") from None
    try:
        os.close(pidfd_open(os.getpid()))
    except OSError as e:
        raise HostUnsupported(f"pidfd_open is not available ({e.strerror}): Linux 5.6 or "
                              "newer is needed") from None
    if not os.access("/dev/shm", os.W_OK):
        raise HostUnsupported("/dev/shm (tmpfs) is not writable")


def _child(program: str, args: list[str], sock: socket.socket, env: dict[str, str] | None
           ) -> None:
    """In the forked child: install the filter, hand its listener over, exec."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        lfd = install_filter(notify_filter(NR.values()))
    except OSError as e:
        os.write(2, f"iommu-sim exec: {e}\n".encode())
        os._exit(127)
    try:
        socket.send_fds(sock, [b"L"], [lfd])
        os.close(lfd)
        sock.close()
    except OSError:
        os._exit(127)  # no write: it would wait for a supervisor that is not listening
    try:
        if env is None:
            os.execvp(program, [program, *args])
        os.execvpe(program, [program, *args], env)
    except OSError as e:
        os.write(2, f"iommu-sim exec: {program}: {e.strerror}\n".encode())
    os._exit(127)


def exec_program(machine: Any, program: str, args: list[str],
                 env: dict[str, str] | None = None, trace: Path | None = None) -> int:
    """Run ``program`` against ``machine``; its exit status (128 + N for signal N)."""
    check_host()
    tasks = machine.platform.tasks
    tasks.remove(machine.task)  # the Machine's own Python task plays no part
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_quit = signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        _child(program, args, child_sock, env)
    child_sock.close()
    status = None
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 1, 1)
        parent_sock.close()
        if not fds:
            _, st = os.waitpid(pid, 0)
            return _code(st)
        listener = Listener(fds[0])
        sup = Supervisor(machine, listener)
        tracer = machine.platform.tracer
        if trace is not None:
            from iommu_core.trace import hook_tracing_monitor

            before, after = hook_tracing_monitor(tracer)
            machine.plugins.add_monitor(before, after)
            tracer.clear()
            tracer.start()
        try:
            status = _serve(sup, listener, pid)
        finally:
            sup.close()
            os.close(listener.fd)
            if trace is not None:
                tracer.stop()
                machine.plugins.clear_monitors()
                trace.write_text(tracer.to_json() + "\n", encoding="utf-8")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGQUIT, old_quit)
        if status is None:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return status


def _code(st: int) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st)


def _serve(sup: Supervisor, listener: Listener, pid: int) -> int:
    """Serve notifications until every watched process is gone; the main one's status.
    Each round first takes what happened (files released, processes gone), then one
    notification: a program's close() comes before its next watched call, so a release
    is always seen before the calls that follow it."""
    status: int | None = None
    ticking = False
    poller = select.poll()
    watched: set[int] = set()
    while True:
        want = {listener.fd, *sup.watch_fds()}
        for fd in watched - want:
            poller.unregister(fd)
        for fd in want - watched:
            poller.register(fd, select.POLLIN | select.POLLERR)
        watched = want
        try:
            events = poller.poll(2 if ticking else (1000 if status is None else 100))
        except InterruptedError:
            continue
        ready = dict(events)
        lev = ready.pop(listener.fd, 0)
        if ready:
            sup.reap(ready)
        if lev & select.POLLIN:
            n = listener.recv()
            if n is not None:
                sup.handle(n)
        else:
            ticking = sup.tick()
        if status is None:
            try:
                got, st = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, st = pid, 0
            if got == pid:
                status = _code(st)
        if lev & (select.POLLHUP | select.POLLERR) and not lev & select.POLLIN:
            if status is None:
                _, st = os.waitpid(pid, 0)
                status = _code(st)
            return status
        ticking = ticking or bool(sup.exports.nshadows)


def _errno_name(e: int) -> str:
    return errno.errorcode.get(e, str(e))
