"""Beyond one machine, for real: a two-node Ray cluster on this machine, and an eval runner
killed in the middle of an episode.

* Two nodes (``ray start --head`` + ``ray start --address=...`` with an ``eval_node``
  resource), the eval runner pinned to the second one with
  ``+evaluation.runner_resources={eval_node:1}`` (Hydra wants the ``+``: the key is a dict
  that is empty by default), ``run_eval.py`` joining with
  ``ray.address``: every video arrives tagged as in a local run, it was encoded by a
  process of the second node, and no process of that node opened the video folder
  (DESIGN.md, "Single writer").
* SIGKILL of the eval runner mid-episode: RLlib restarts it, the run exits 0, the episode
  that died leaves no file anywhere, the later rounds record as usual.

The nodes are started in their own sessions: every process of a node (GCS, raylet,
workers, encoder processes) keeps that session id, so a node is stopped by signalling
exactly its processes. Never ``ray stop``: it stops every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from eval_recorder.gallery import GALLERY
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.training_record import TRAINING
from support.jobs import Proc, check_folder_is_consistent, jobs, session_processes, wait_for  # noqa: F401  (jobs: a fixture)
from helpers import evaluate_trajectory

pytestmark = pytest.mark.slow  # real Ray / RLlib runs

RAY = Path(sys.executable).with_name("ray")
ITERATION_LINE = re.compile(r"^iteration (\d+)/\d+ \| env steps (\d+) \|.* videos written (\d+)$")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket stays bound until all are chosen (a port
    closed at once may be handed out again by the next bind, and Ray refuses one port for two
    of a node's components)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _short_tmpdir(prefix: str) -> Path:
    """A private folder with a short path: Ray's Unix socket paths under it must stay below
    107 characters, which pytest's tmp_path does not leave room for."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---- processes, from /proc ------------------------------------------------------------




def opened_paths(pid: int) -> list[str]:
    """The working directory and the paths of the open files of ``pid`` (gone: none)."""
    paths = []
    for link in [f"/proc/{pid}/cwd"] + [f"/proc/{pid}/fd/{fd}" for fd in _listdir(f"/proc/{pid}/fd")]:
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith("/"):
            paths.append(target.removesuffix(" (deleted)"))
    return paths


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _inside(path: str, folder: Path) -> bool:
    folder = os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


# ---- a two-node Ray cluster on this machine ----------------------------------------------


@dataclass
class Node:
    """One ``ray start``: its session id, its TMPDIR and what ``ray start`` printed."""

    name: str
    sid: int
    tmpdir: Path
    output: str = ""

    def processes(self) -> dict[int, Proc]:
        return session_processes(self.sid)

    def raylet(self) -> int:
        (pid,) = [p.pid for p in self.processes().values() if p.comm == "raylet"]
        return pid

    def stop(self) -> None:
        """TERM, then KILL, exactly this node's processes; waits until none is left."""
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.processes():
                return
        raise AssertionError(f"{self.name} node processes survived SIGKILL: {self.processes()}")


@dataclass
class Cluster:
    address: str  # the head's GCS address: what ray.init(address=...) and ray start --address take
    head: Node
    worker: Node
    client_env: dict  # environment of a driver joining the cluster
    start_seconds: float


def _start_node(name: str, args: list[str], env: dict, tmpdir: Path, started: list[Node]) -> Node:
    proc = subprocess.Popen([str(RAY), "start", *args], env=dict(env, TMPDIR=str(tmpdir)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    node = Node(name, sid=proc.pid, tmpdir=tmpdir)
    started.append(node)  # stopped by the fixture even if `ray start` fails or hangs
    node.output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"ray start ({name}) failed:\n{node.output[-3000:]}"
    return node


def _agent_ports(ports: list[int]) -> list[str]:
    """Every fixed default port of a node's agents, replaced by one of four free ``ports`` (two
    nodes, and other people's Ray, share this machine)."""
    listen, grpc, metrics, runtime_env = ports
    return [f"--dashboard-agent-listen-port={listen}", f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"]


@pytest.fixture
def two_node_cluster():
    """A head node (1 CPU) and a worker node (1 CPU and the custom resource eval_node),
    each in its own session and TMPDIR, with a token of their own; both stopped at the end."""
    base = _short_tmpdir("er-cluster-")
    # Ray 2.60 turns token authentication on for a head when ~/.ray/auth_token exists, and a
    # joining node or driver then needs the token: give the cluster its own, explicitly.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    temp_dir = base / "ray"  # the cluster's session folder (sockets, logs), shared by both nodes on this machine
    started: list[Node] = []
    try:
        began = time.monotonic()
        port, *agent_ports = _free_ports(9)  # the head's GCS, then both nodes' agents: all distinct
        address = f"127.0.0.1:{port}"
        head_tmp, worker_tmp, driver_tmp = (base / "head", base / "worker", base / "driver")
        for folder in (head_tmp, worker_tmp, driver_tmp):
            folder.mkdir()
        head = _start_node("head", ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                    f"--temp-dir={temp_dir}", "--disable-usage-stats", *_agent_ports(agent_ports[:4])],
                           env, head_tmp, started)
        worker = _start_node("worker", [f"--address={address}", "--num-cpus=1", '--resources={"eval_node": 1}',
                                        f"--temp-dir={temp_dir}", *_agent_ports(agent_ports[4:])], env, worker_tmp, started)
        yield Cluster(address=address, head=head, worker=worker, client_env=dict(env, TMPDIR=str(driver_tmp)),
                      start_seconds=time.monotonic() - began)
    finally:
        for node in reversed(started):
            node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _iteration_lines(stdout: str) -> dict[int, tuple[int, int]]:
    """{iteration: (env steps, videos written)} from the lines the job prints."""
    found = {}
    for line in stdout.splitlines():
        match = ITERATION_LINE.match(line)
        if match:
            found[int(match.group(1))] = (int(match.group(2)), int(match.group(3)))
    return found


def test_two_node_cluster_eval_runner_on_the_worker_node_driver_writes_every_video(
    tmp_path, two_node_cluster, jobs
):
    cluster = two_node_cluster
    worker = cluster.worker
    videos = tmp_path / "videos"
    began = time.monotonic()
    job = jobs(tmp_path, "cluster", "training.iterations=2", "training.num_env_runners=0",
               "evaluation.num_env_runners=1", "+evaluation.runner_resources={eval_node:1}",
               f"ray.address={cluster.address}", "wandb.run_id=cluster1", f"recording.video_dir={videos}",
               env=cluster.client_env)

    # While the job runs: every process of the worker node, its parent, what it has open.
    seen: dict[int, Proc] = {}
    touched: list[tuple[int, str, str]] = []  # (pid, comm, path) of worker-node opens inside video_dir
    worker_mp4s: set[str] = set()  # mp4 files worker-node processes had open (scratch files)
    named: list[tuple[int, str]] = []  # worker-node processes given the video folder's path
    while job.proc.poll() is None and time.monotonic() - began < 600:
        for pid, proc in worker.processes().items():
            if pid not in seen:
                for part in ("cmdline", "environ"):
                    if os.fsencode(str(videos)) in _read_bytes(f"/proc/{pid}/{part}"):
                        named.append((pid, part))
            seen[pid] = proc  # the latest look: a worker names itself ray::... once it runs
            for path in opened_paths(pid):
                if _inside(path, videos):
                    touched.append((pid, proc.comm, path))
                if path.endswith(".mp4"):
                    worker_mp4s.add(path)
        time.sleep(0.1)
    code = job.wait(timeout=60)
    run_seconds = time.monotonic() - began
    assert code == 0, job.stderr[-3000:]
    assert f"joined the Ray cluster at {cluster.address} (2 CPUs)" in job.stdout  # joined, started no Ray

    # Every video arrived, tagged exactly as in a local serial run.
    manifest = check_folder_is_consistent(videos)
    assert [(r["training_iteration"], r["evaluation_round"], r["episode_index"]) for r in manifest] == [
        (1, 1, 0), (1, 1, 1), (2, 2, 0), (2, 2, 1)
    ]
    printed = _iteration_lines(job.stdout)
    assert sorted(printed) == [1, 2]
    for record in manifest:
        assert record["env_steps"] == printed[record["training_iteration"]][0]
        assert record["checkpoint"] is None and record["run_id"] == "cluster1"
    assert [videos_written for _, videos_written in printed.values()] == [2, 2]
    # Each episode's replay record came through Ray with its video: the driver wrote it, and
    # flatland's own evaluator replays it to the arrivals the worker node saw.
    for record in manifest:
        assert record["record"] == record["file"].removesuffix(".mp4")
        env, _ = evaluate_trajectory(videos, record)
        assert sum(agent.state == 6 for agent in env.agents) == record["agents_arrived"]  # TrainState.DONE

    # Encoded on the worker node: by one of its processes, a descendant of its raylet,
    # into scratch files under the worker node's own TMPDIR.
    raylets = [pid for pid, proc in seen.items() if proc.comm == "raylet"]
    assert len(raylets) == 1, seen
    for pid in {record["runner"]["pid"] for record in manifest}:
        assert pid in seen, f"runner {pid} is not a process of the worker node"
        chain = [pid]
        while chain[-1] in seen and chain[-1] != raylets[0]:
            chain.append(seen[chain[-1]].ppid)
        assert chain[-1] == raylets[0], f"runner {pid} is not below the worker raylet: {chain}"
        assert seen[pid].comm.startswith("ray::"), seen[pid]
    assert worker_mp4s and all(_inside(path, worker.tmpdir) for path in worker_mp4s), worker_mp4s
    assert not any(_inside(path, cluster.head.tmpdir) for path in worker_mp4s)

    # Only the driver wrote the folder: no worker-node process had it open or as its working
    # directory, none was given its path.
    assert touched == [] and named == [], (touched, named)
    assert len(seen) >= 3  # raylet, agents, the eval runner, its encoder: the scan saw them

    sizes = [record["bytes"] for record in manifest]
    print(f"\ntwo-node run: cluster start {cluster.start_seconds:.1f} s, run_eval.py {run_seconds:.1f} s; "
          f"bytes per video through Ray: {sizes} (mean {sum(sizes) / len(sizes):.0f})")


# ---- an eval runner killed mid-episode ---------------------------------------------------


def test_eval_runner_killed_mid_episode_is_restarted_and_leaves_no_partial_file(tmp_path, jobs):
    job_tmp = _short_tmpdir("er-fault-")  # the job's TMPDIR: its Ray and the runners' scratch folder are private
    try:
        _kill_runner_mid_episode(tmp_path, jobs, job_tmp)
    finally:
        shutil.rmtree(job_tmp, ignore_errors=True)


def _kill_runner_mid_episode(tmp_path: Path, jobs, job_tmp: Path) -> None:
    scratch = job_tmp / "eval_recorder-scratch"
    videos = tmp_path / "videos"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(job_tmp)
    iterations = 4
    job = jobs(tmp_path, "fault", f"training.iterations={iterations}", "evaluation.num_env_runners=1",
               "wandb.run_id=fault1", f"recording.video_dir={videos}", env=env)

    wait_for(lambda: len(read_manifest(videos)) >= 2 or job.proc.poll() is not None, 300, "the first round")
    first = read_manifest(videos)
    assert len(first) == 2, job.stderr[-3000:]
    (runner,) = {record["runner"]["pid"] for record in first}

    def runner_scratch() -> list[Path]:
        return sorted(scratch.glob(f"episode-{runner}-*.mp4"))

    # The runner's scratch file exists from an episode's reset until its video is finished.
    wait_for(lambda: job.proc.poll() is not None or runner_scratch(), 120, f"an episode on eval runner {runner}")
    assert job.proc.poll() is None, (
        f"the job ended before eval runner {runner} had a scratch file episode-{runner}-*.mp4 in {scratch}: "
        f"does the recorder encode into eval_recorder.scratch.new_episode_file()?"
    )
    killed_round = len(read_manifest(videos)) // 2 + 1
    os.kill(runner, signal.SIGKILL)
    # Still there after the kill: the runner died with an episode unfinished.
    (partial,) = runner_scratch()

    assert job.wait(timeout=600) == 0, job.stderr[-3000:]
    assert 2 <= killed_round < iterations

    # The round that lost its runner wrote nothing; every other round is complete.
    manifest = check_folder_is_consistent(videos)
    expected = [(it, ep) for it in range(1, iterations + 1) if it != killed_round for ep in (0, 1)]
    assert [(r["training_iteration"], r["episode_index"]) for r in manifest] == expected
    printed = _iteration_lines(job.stdout)
    assert {it: n for it, (_, n) in printed.items()} == {
        it: 0 if it == killed_round else 2 for it in range(1, iterations + 1)
    }
    for record in manifest:
        assert record["env_steps"] == printed[record["training_iteration"]][0]
    rounds = [r["evaluation_round"] for r in manifest]
    assert rounds == sorted(rounds) and len(set(rounds)) == iterations - 1

    # RLlib restarted the runner: later rounds were recorded by a new process.
    later = [r for r in manifest if r["training_iteration"] > killed_round]
    assert later and runner not in {r["runner"]["pid"] for r in later}

    # No partial file anywhere: the folder holds exactly the manifest's videos and sidecars
    # (and the run's own files), the scratch folder (and the temp folder itself) no mp4 at all.
    expected_files = {MANIFEST, GALLERY, TRAINING, ".eval_recorder-owner.json", ".eval_recorder.lock"}
    for record in manifest:
        expected_files |= {record["file"], record["file"].removesuffix(".mp4") + ".json", record["poster"], record["record"]}
    assert {p.name for p in videos.iterdir()} == expected_files
    assert not partial.exists(), f"{partial.name} of the killed runner was left behind"
    assert sorted(scratch.glob("*.mp4")) == [] and sorted(job_tmp.glob("*.mp4")) == []
    assert json.loads((videos / ".eval_recorder-owner.json").read_text())["run_id"] == "fault1"


def test_on_a_cluster_an_eval_runner_that_cannot_record_is_refused_before_the_folder_is_claimed(
    tmp_path, two_node_cluster, jobs, trained_run
):
    """The eval runner on the worker node has a read-only scratch folder; the driver's is
    fine, so only the runner's own answer can tell: the training job and a standalone
    evaluation are refused in its sentence (exit 2) and nothing was claimed or written: no
    video folder, no run folder (nor a wandb run in it)."""
    from support.filesystems import read_only
    from test_faults_scratch import read_only_sentence

    cluster = two_node_cluster
    scratch = cluster.worker.tmpdir / "eval_recorder-scratch"
    scratch.mkdir()
    on_the_worker = ("evaluation.num_env_runners=1", "+evaluation.runner_resources={eval_node:1}",
                     f"ray.address={cluster.address}")
    with read_only(scratch):
        for name, options in (("training", ("training.iterations=1", "training.num_env_runners=0")),
                              ("standalone", (f"checkpoint={trained_run / 'checkpoints' / 'it000002'}",))):
            videos = tmp_path / f"{name}-videos"
            job = jobs(tmp_path, name, *options, *on_the_worker, f"wandb.run_id={name}1",
                       f"recording.video_dir={videos}", env=cluster.client_env)
            code = job.wait(timeout=300)
            assert code == 2, job.stderr[-3000:]
            assert job.stderr.strip().splitlines()[-1] == f"error: {read_only_sentence(scratch)}"
            assert f"joined the Ray cluster at {cluster.address}" in job.stdout  # refused once the runner answered
            assert not videos.exists()
            assert not job.run_dir.exists()
