"""A grid edge unit in qemu-system-arm, driven over its serial console with pexpect.

The CI image's console is a root shell on QEMU's PL011 UART (board/qemu-ci/skeleton/etc/
inittab). Everything a test does on the unit goes through that console, as a person with a
serial cable would, and every wait watches the console for signs of a broken boot (kernel
panic, a root that does not mount, a Python traceback, an init script that FAILs), so a
failure says what went wrong instead of timing out. The whole console is kept in a log file
next to the test's other logs; a failure message ends with its last lines.

Tests: this is the harness of tests/qemu/test_qemu_*.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import logging
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pexpect


def _load_run_qemu() -> ModuleType:
    """board/qemu-ci/run_qemu.py, the one place that knows QEMU's command line. It is a script
    of the image's tooling, not a package: loaded from its file, sys.path is left alone."""
    path = Path(__file__).resolve().parents[2] / "board" / "qemu-ci" / "run_qemu.py"
    spec = importlib.util.spec_from_file_location("run_qemu", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_qemu = _load_run_qemu()
progress = logging.getLogger("qemu")

#: Signs of a broken unit, watched for during every wait.
TRACEBACK = r"Traceback \(most recent call last\)"
FAILURES = (
    r"Kernel panic",
    r"initramfs: cannot mount",
    TRACEBACK,
    r"EXT4-fs error",
    r"Starting [\w.-]+: FAIL",
    r"A/B: slot \w did not start",
)
PROMPT = "@@> "
#: Terminal escapes (colours of 'rauc status', ash's cursor queries), dropped from outputs.
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: The shell prompt of a freshly booted unit (skeleton/etc/profile sets PS1).
BOOT_PROMPT = r"gridedge-ci:[^\r\n]*# "
BOOT_TIMEOUT = 240.0


class UnitError(AssertionError):
    """The unit misbehaved or a wait timed out; the message ends with the console's tail."""


class Unit:
    """One qemu-system-arm process booting ``disk``; ``boot()`` again after a power cut."""

    def __init__(self, disk: Path, console_log: Path, *, radio: Path | None = None,
                 forwards: tuple[tuple[int, int], ...] = ()) -> None:
        self.disk = disk
        self.console_log = console_log
        self.radio = radio
        #: (host loopback port, guest port) pairs reachable from the host (run_qemu.command)
        self.forwards = forwards
        self.child: pexpect.spawn | None = None
        self.boots = 0
        self.powered_on = 0.0

    # --- power ---------------------------------------------------------------------------

    def power_on(self) -> None:
        """Start QEMU (U-Boot runs at once); the console log keeps every boot's output."""
        assert self.child is None or not self.child.isalive(), "the unit is already running"
        radio = str(self.radio) if self.radio else None
        cmd = run_qemu.command(self.disk, radio=radio, exit_on_reset=True,
                               forwards=self.forwards)
        log = ConsoleLog(self.console_log)
        log.write(f"\n===== power on #{self.boots + 1} at {time.strftime('%H:%M:%S')} =====\n")
        self.child = pexpect.spawn(
            cmd[0],
            cmd[1:],
            encoding="utf-8",
            codec_errors="replace",
            timeout=BOOT_TIMEOUT,
            maxread=65536,
        )
        self.child.logfile_read = log
        self.boots += 1
        self.powered_on = time.monotonic()
        log.write(f"{' '.join(cmd)}\n")
        progress.info("power on #%d: %s", self.boots, self.disk.name)

    def boot(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Power on and wait for the shell; returns the slot U-Boot chose ("A" or "B")."""
        self.power_on()
        slot = self.expect(r"A/B: booting slot (\w)", timeout).group(1)
        progress.info("U-Boot chose slot %s after %.1f s", slot, time.monotonic() - self.powered_on)
        self.wait_for_shell(timeout)
        return slot

    def host_port(self, guest_port: int) -> int:
        """The host loopback port forwarded to ``guest_port`` of the guest."""
        return next(h for h, g in self.forwards if g == guest_port)

    def wait_for_shell(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait for the console shell of a boot in progress and make it scriptable."""
        self.expect(BOOT_PROMPT, timeout)
        progress.info("shell after %.1f s", time.monotonic() - self.powered_on)
        child = self._child()
        # A prompt no log line can contain; kernel messages off the console.
        child.sendline("PS1='@@''> '; dmesg -n 1")  # typed so that its echo is not the prompt
        child.expect_exact(PROMPT)
        self.sync()

    def power_cut(self) -> None:
        """SIGKILL QEMU: the unit loses power with whatever it had not written."""
        progress.info("power cut (SIGKILL) after %.1f s", time.monotonic() - self.powered_on)
        child = self._child()
        child.kill(signal.SIGKILL)
        child.close(force=True)
        self._close_log()

    def shut_down(self) -> None:
        """Stop QEMU for good (the end of a test)."""
        if self.child is not None and self.child.isalive():
            self.child.kill(signal.SIGKILL)
            self.child.close(force=True)
        self._close_log()

    def _close_log(self) -> None:
        if self.child is not None and self.child.logfile_read is not None:
            self.child.logfile_read.close()
            self.child.logfile_read = None

    # --- the console -----------------------------------------------------------------------

    def _reset_by_guest(self) -> bool:
        """Did QEMU exit because the guest reset (reboot)? Then it exits 0 (-no-reboot)."""
        child = self._child()
        child.close()
        self._close_log()
        return child.exitstatus == 0 and child.signalstatus is None

    def _flush_log(self) -> None:
        if self.child is not None and self.child.logfile_read is not None:
            self.child.logfile_read.flush()

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for ``pattern`` on the console; fail at once on any of FAILURES.

        That includes a Python traceback while the system goes down: gridedge must stop
        cleanly on the SIGTERMs of a reboot.
        """
        child = self._child()
        patterns = [pattern, *FAILURES]
        deadline = time.monotonic() + timeout
        while True:
            try:
                index = child.expect(patterns, timeout=max(0.0, deadline - time.monotonic()))
            except pexpect.TIMEOUT:
                raise self.error(
                    f"timed out after {timeout:.0f} s waiting for {pattern!r}"
                ) from None
            except pexpect.EOF:
                if not self._reset_by_guest():
                    raise self.error(f"QEMU exited while waiting for {pattern!r}") from None
                progress.info(
                    "the unit reset itself after %.1f s", time.monotonic() - self.powered_on
                )
                self.power_on()
                child = self._child()
                continue
            if index == 0:
                break
            failure = FAILURES[index - 1]
            # Let the rest of the message reach the log before quoting it.
            with contextlib.suppress(pexpect.EOF):
                child.expect(pexpect.TIMEOUT, timeout=3)
            raise self.error(f"the unit failed ({failure!r}) while waiting for {pattern!r}")
        match = child.match
        assert isinstance(match, re.Match)
        return match

    def idle(self, seconds: float) -> None:
        """Let the unit run for ``seconds`` while reading its console, failing at once on any
        of FAILURES. A console nobody reads stalls the guest once the pty's buffer is full, so
        a test that waits on something else (the cloud) idles its units meanwhile.

        A reset of the guest is left to the next :meth:`expect` (which powers the unit on
        again and sees its boot): until then the unit stays off, and :attr:`halted` is true.
        """
        child = self._child()
        deadline = time.monotonic() + seconds
        if not child.isalive():
            time.sleep(seconds)
            return
        try:
            index = child.expect(list(FAILURES), timeout=seconds)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return
        with contextlib.suppress(pexpect.EOF):
            child.expect(pexpect.TIMEOUT, timeout=3)
        raise self.error(f"the unit failed ({FAILURES[index]!r}) while idle")

    @property
    def halted(self) -> bool:
        """QEMU has exited (the guest reset itself) and nobody has powered the unit on yet."""
        return self.child is not None and not self.child.isalive()

    def sync(self) -> None:
        """Wait until the shell has read everything typed so far."""
        token = f"{time.monotonic_ns()}"
        self._child().sendline(f"printf 'sync%sx\\n' {token}")
        self.expect(f"sync{token}x\r*\n", 30)
        self._child().expect_exact(PROMPT, timeout=30)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command on the unit: (exit status, output).

        Output is what the command printed between two markers; a log line the unit prints
        meanwhile (gridedge logs to the console) can land in it, so callers look for what
        they expect rather than compare the whole text.
        """
        child = self._child()
        token = f"{time.monotonic_ns()}"
        # A command ending in a here-document ends with its terminator line: no ';' after it.
        end = "" if command.endswith("\n") else "; "
        child.sendline(f"printf '@@B%s\\n' {token}; {command}{end}printf '@@E%s %s\\n' {token} $?")
        match = self.expect(rf"@@B{token}\r*\n(.*?)@@E{token} (\d+)\r*\n", timeout)
        child.expect_exact(PROMPT, timeout=30)
        output = ANSI.sub("", match.group(1).replace("\r", ""))
        return int(match.group(2)), output

    def check(self, command: str, timeout: float = 60.0) -> str:
        """Run ``command``; fail unless it exits 0. Returns its output."""
        status, output = self.run(command, timeout)
        if status != 0:
            raise self.error(f"{command!r} exited {status}:\n{output}")
        return output

    def value(self, command: str, timeout: float = 60.0) -> str:
        """The one-line result of ``command``, picked out of any log lines around it."""
        status, output = self.run(f"printf '@@V%s@@\\n' \"$({command})\"", timeout)
        found = re.findall(r"@@V(.*?)@@", output, re.DOTALL)
        if status != 0 or not found:
            raise self.error(f"no value from {command!r}:\n{output}")
        return str(found[-1]).strip()

    def write_file(
        self, path: str, data: bytes, *, mode: str = "0644", owner: str = "root"
    ) -> None:
        """Put a file on the unit through the console (base64, as a provisioning tool would)."""
        text = base64.encodebytes(data).decode()
        quoted = shlex.quote(path)
        self.check(
            f"mkdir -p $(dirname {quoted}) && base64 -d > {quoted}.tmp <<'@@EOF'\n{text}@@EOF\n"
        )
        self.check(
            f"chmod {mode} {quoted}.tmp && chown {owner}:{owner} {quoted}.tmp && "
            f"mv {quoted}.tmp {quoted} && sync"
        )

    def wait_until(self, command: str, timeout: float, what: str, interval: float = 3.0) -> str:
        """Run ``command`` every ``interval`` s until it exits 0; returns its output."""
        deadline = time.monotonic() + timeout
        while True:
            status, output = self.run(command)
            if status == 0:
                return output
            if time.monotonic() > deadline:
                raise self.error(
                    f"timed out after {timeout:.0f} s waiting for {what}; last:\n{output}"
                )
            time.sleep(interval)

    def _child(self) -> pexpect.spawn:
        if self.child is None:
            raise UnitError("the unit was never powered on")
        return self.child

    def error(self, message: str) -> UnitError:
        self._flush_log()
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()[-60:]
        except OSError:
            lines = []
        tail = "\n".join(ANSI.sub("", line) for line in lines)
        return UnitError(f"{message}\n--- console ({self.console_log}), last lines ---\n{tail}")


class ConsoleLog:
    """The console transcript, each line stamped with the seconds since power-on."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8", errors="replace")
        self.started = time.monotonic()
        self.at_line_start = True

    def write(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}] "
        for line in text.splitlines(keepends=True):
            self.file.write((stamp if self.at_line_start else "") + line)
            self.at_line_start = line.endswith("\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def partition(disk: Path, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of MBR partition ``number`` of ``disk``."""
    with disk.open("rb") as f:
        mbr = f.read(512)
    entry = mbr[446 + 16 * (number - 1) : 446 + 16 * number]
    start = int.from_bytes(entry[8:12], "little") * 512
    size = int.from_bytes(entry[12:16], "little") * 512
    assert size > 0, f"no partition {number} in {disk}"
    return start, size


def partition_digest(disk: Path, number: int, length: int | None = None) -> str:
    """sha256 of partition ``number`` of a (stopped) unit's disk, or of its first ``length``
    bytes, read from the host."""
    digest = hashlib.sha256()
    start, size = partition(disk, number)
    left = size if length is None else length
    assert left <= size, f"{length} bytes do not fit partition {number} ({size} bytes)"
    with disk.open("rb") as f:
        f.seek(start)
        while left:
            chunk = f.read(min(left, 1 << 20))
            assert chunk, f"{disk} ends inside partition {number}"
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def boot_env(unit: Unit) -> dict[str, str]:
    """The A/B variables as Linux (fw_printenv) sees them."""
    output = unit.check("fw_printenv BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT")
    return dict(
        line.strip().split("=", 1) for line in output.splitlines() if line.startswith("BOOT_")
    )


def copy_disk(src: Path, dest: Path) -> Path:
    """A private, sparse copy of the image: every test boots a unit fresh from the factory."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest
