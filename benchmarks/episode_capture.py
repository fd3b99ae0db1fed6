"""What keeping an episode's replay record costs the stepping thread, and its size.

Usage (from the repo root)::

    python benchmarks/episode_capture.py               # every case, ~1 min
    python benchmarks/episode_capture.py --cases cartpole small

Cases: ``cartpole`` (gymnasium CartPole-v1, EpisodeCapture.step), ``multi`` (RLlib's
MultiAgentCartPole with 4 agents, EpisodeCapture.step_multi), ``small`` and ``large``
(Flatland, 10 trains on 40x40 and 50 on 100x100, TrajectoryCapture.step), each over whole
episodes of seeded random actions. Per step it reports the capture call alone (timed around
each call) and with ``finish()`` (packing at the episode's end) spread over the steps, next to
what the env's own step takes; then the record's bytes (``to_bytes()``) per step per agent
without its fixed part (Flatland: the initial state; measured as the difference between the
episode and its first 10 steps), and the fixed part. PASS/FAIL against 0.2 ms per step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

GOAL_MS = 0.2


def cartpole(episodes: int):
    import gymnasium as gym

    from eval_recorder.episode_record import EpisodeCapture

    env, rng = gym.make("CartPole-v1"), np.random.default_rng(0)
    for seed in range(episodes):
        env.reset(seed=seed)
        capture = EpisodeCapture(seed=seed)
        while True:
            action = np.int64(rng.integers(2))
            t0 = time.perf_counter()
            _, reward, terminated, truncated, _ = env.step(action)
            t1 = time.perf_counter()
            capture.step(action, reward, terminated, truncated)
            yield "step", t1 - t0, time.perf_counter() - t1
            if terminated or truncated:
                break
        yield "episode", capture, 1


def multi(episodes: int):
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    from eval_recorder.episode_record import EpisodeCapture

    env, rng = MultiAgentCartPole({"num_agents": 4}), np.random.default_rng(0)
    for seed in range(episodes):
        env.reset(seed=seed)
        capture, acting = EpisodeCapture(seed=seed), set(range(4))
        while True:
            actions = {agent: np.int64(rng.integers(2)) for agent in sorted(acting)}
            t0 = time.perf_counter()
            _, rewards, terminateds, truncateds, _ = env.step(actions)
            t1 = time.perf_counter()
            capture.step_multi(actions, rewards, terminateds, truncateds)
            yield "step", t1 - t0, time.perf_counter() - t1
            acting -= {agent for agent in acting if terminateds.get(agent) or truncateds.get(agent)}
            if terminateds["__all__"] or truncateds["__all__"]:
                break
        yield "episode", capture, 4


def flatland(n_agents: int, size: int, episodes: int):
    from flatland.env_generation.env_generator import env_generator

    from eval_recorder.flatland.trajectory import TrajectoryCapture

    rng = np.random.default_rng(0)
    for seed in range(episodes):
        env, _, _ = env_generator(n_agents=n_agents, x_dim=size, y_dim=size, n_cities=max(2, size // 20),
                                  max_rail_pairs_in_city=2, max_rails_between_cities=2, malfunction_interval=100,
                                  seed=seed)
        env.reset(random_seed=seed)
        capture = TrajectoryCapture(env)
        while True:
            actions = {handle: int(rng.integers(0, 5)) for handle in range(n_agents)}
            t0 = time.perf_counter()
            _, _, dones, _ = env.step(actions)
            t1 = time.perf_counter()
            capture.step(actions)
            yield "step", t1 - t0, time.perf_counter() - t1
            if dones["__all__"]:
                break
        yield "episode", capture, n_agents


CASES = {
    "cartpole": lambda: cartpole(200),
    "multi": lambda: multi(100),
    "small": lambda: flatland(10, 40, 3),
    "large": lambda: flatland(50, 100, 1),
}


def measure(name: str) -> bool:
    env_s = capture_s = finish_s = 0.0
    steps = 0
    per_step_agent = []
    fixed = []
    for kind, first, second in CASES[name]():
        if kind == "step":
            env_s += first
            capture_s += second
            steps += 1
            continue
        capture, agents = first, second
        t0 = time.perf_counter()
        record = capture.finish()
        finish_s += time.perf_counter() - t0
        size = len(record.to_bytes())
        head = _first_steps(capture, 10)
        if head is not None and record.steps > 10:
            head_size = len(head.to_bytes())
            per_step_agent.append((size - head_size) / ((record.steps - 10) * agents))
            fixed.append(head_size)
    capture_ms = capture_s / steps * 1e3
    with_finish_ms = (capture_s + finish_s) / steps * 1e3
    ok = with_finish_ms <= GOAL_MS
    print(f"{name:9s} {steps:6d} steps  env {env_s / steps * 1e3:7.3f} ms/step  capture {capture_ms:6.4f} ms/step  "
          f"with finish {with_finish_ms:6.4f} ms/step  "
          f"record {np.mean(per_step_agent):5.2f} B/step/agent + {np.mean(fixed) / 1e3:6.1f} kB fixed  "
          f"{'PASS' if ok else 'FAIL'} (<= {GOAL_MS} ms/step)")
    return ok


def _first_steps(capture, count: int):
    """The record of the capture's first ``count`` steps (to tell the per-step bytes from the fixed ones)."""
    import copy

    head = copy.copy(capture)
    for name in ("_actions", "_rewards", "_terminated", "_truncated", "_dones", "_rows"):
        if hasattr(head, name):
            setattr(head, name, getattr(capture, name)[:count])
    return head.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args()
    results = [measure(name) for name in args.cases]
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
