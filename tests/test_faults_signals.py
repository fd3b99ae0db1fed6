"""eval_recorder.stopping on its own: SIGTERM and SIGINT become a clean stop of the main
thread with the right exit code, never in the middle of a critical block; a second signal
ends the process at once once the run is closed; processes started while children are
shielded ignore a SIGTERM sent to the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eval_recorder.stopping import StopSignals, children_shielded, critical

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("number", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_raises_keyboard_interrupt_in_the_main_thread(number, code):
    previous = signal.getsignal(number)
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), number)
            time.sleep(5)  # the handler runs here
        assert (stop.stopping, stop.exit_code, stop.hurry.is_set()) == (True, code, False)
    assert signal.getsignal(number) is previous  # given back


def test_a_stop_inside_a_critical_block_takes_effect_when_the_block_ends():
    done = []
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            with critical():
                with critical():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    done.append("inner")
                done.append("outer")
        assert done == ["inner", "outer"] and stop.exit_code == 143


def test_a_second_signal_hurries_and_after_closing_ends_the_process_at_once():
    script = textwrap.dedent("""
        import os, signal, sys, time
        from eval_recorder.stopping import StopSignals
        with StopSignals() as stop:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except KeyboardInterrupt:
                print("stopping", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one, while closing
            time.sleep(0.2)
            print("hurry", stop.hurry.is_set(), flush=True)
            stop.closed(farewell="interrupted: resume with ...", before_exit=lambda: print("before exit", flush=True))
            print("never printed", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 143
    assert proc.stdout.splitlines() == ["stopping", "hurry True", "before exit"]
    assert proc.stderr.splitlines() == ["received SIGTERM again: stopping at once", "interrupted: resume with ..."]


def _blocked(pid: int) -> int:
    (line,) = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigBlk:")]
    return int(line.split()[1], 16)


def test_processes_started_while_children_are_shielded_ignore_sigterm_to_the_group(tmp_path):
    """As Ray starts its processes with SIGINT blocked, the recorder starts Ray with SIGTERM
    blocked too: a SIGTERM to the whole group reaches only the driver."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    with children_shielded():
        shielded = subprocess.Popen(sleeper)
    plain = subprocess.Popen(sleeper)
    try:
        assert _blocked(shielded.pid) & (1 << (signal.SIGTERM - 1))
        assert not _blocked(plain.pid) & (1 << (signal.SIGTERM - 1))
        assert not _blocked(os.getpid()) & (1 << (signal.SIGTERM - 1))  # this thread got it back
        shielded.send_signal(signal.SIGTERM)
        plain.send_signal(signal.SIGTERM)
        assert plain.wait(timeout=10) == -signal.SIGTERM
        time.sleep(0.5)
        assert shielded.poll() is None  # still running
    finally:
        shielded.kill()
        plain.kill()
        shielded.wait()
