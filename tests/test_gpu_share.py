"""Several jobs per GPU (lotto.gpu_slot -k) and energy per job, with fake GPU ids and a fake
NVML (no GPU needed). About 15 s of wall time, mostly short wrapper processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_gpu_slot import WRAPPER, is_running, py, run_wrapper, wait_for_file, wrapper_env

from lotto.gpu_slot import EnergyMeter, acquire, jobs_on_gpu

POOL = ("0", "1", "2")


def per_gpu_peak(allocations: list[tuple[tuple[str, ...], float, float]]) -> dict[str, int]:
    """Most jobs holding each GPU at one instant (an end frees before a start at that instant)."""
    events: dict[str, list[tuple[float, int]]] = {}
    for gpus, start, end in allocations:
        for gpu in gpus:
            events.setdefault(gpu, []).extend([(start, 1), (end, -1)])
    peaks = {}
    for gpu, changes in events.items():
        level = peak = 0
        for _, change in sorted(changes):
            level += change
            peak = max(peak, level)
        peaks[gpu] = peak
    return peaks


def test_per_gpu_peak_detects_stacking():
    assert per_gpu_peak([(("0",), 0, 2), (("0",), 1, 3), (("0",), 1.5, 2.5), (("1",), 0, 1)]) == {"0": 3, "1": 1}
    assert per_gpu_peak([(("0",), 0, 1), (("0",), 1, 2)]) == {"0": 1}


def run_threads(lock_dir: str, count: int, n: int, per_gpu: int, hold: tuple[float, float],
                need_mb: int = 0) -> list[tuple[tuple[str, ...], float, float]]:
    rng = random.Random(count)
    allocations: list[tuple[tuple[str, ...], float, float]] = []

    def job(delay: float, seconds: float) -> None:
        time.sleep(delay)
        with acquire(n, POOL, lock_dir, timeout=60, poll_interval=0.005, per_gpu=per_gpu,
                     need_mb=need_mb) as slot:
            start = time.monotonic()
            time.sleep(seconds)
            allocations.append((slot.ids, start, time.monotonic()))

    threads = [threading.Thread(target=job, args=(rng.uniform(0, 0.02), rng.uniform(*hold)))
               for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return allocations


@pytest.mark.parametrize("per_gpu", [2, 4])
def test_stress_at_most_k_jobs_per_gpu_and_every_gpu_filled(tmp_path, per_gpu):
    """300 one-GPU jobs at once over 3 fake GPUs with k slots: no GPU ever runs more than k,
    and every GPU reaches k (the slots really are used)."""
    allocations = run_threads(str(tmp_path), 300, 1, per_gpu, hold=(0.002, 0.01))
    assert len(allocations) == 300
    assert per_gpu_peak(allocations) == dict.fromkeys(POOL, per_gpu)


def test_multi_gpu_requests_take_one_slot_on_distinct_gpus_all_or_nothing(tmp_path):
    """2-GPU jobs with k=2: never two slots of one GPU, never more than 2 jobs on a GPU, and
    no deadlock between them."""
    allocations = run_threads(str(tmp_path), 60, 2, 2, hold=(0.001, 0.004))
    assert len(allocations) == 60
    assert all(len(set(gpus)) == 2 for gpus, _, _ in allocations)
    assert max(per_gpu_peak(allocations).values()) == 2


def test_memory_estimates_keep_jobs_that_would_not_fit_apart(tmp_path, monkeypatch):
    """GPUs of 1,000 MB (95% usable) and k=4: 600 MB jobs run one per GPU, 300 MB jobs three."""
    monkeypatch.setenv("LOTTO_GPU_MEM_MB", "1000")
    big = run_threads(str(tmp_path / "big"), 40, 1, 4, hold=(0.003, 0.01), need_mb=600)
    assert per_gpu_peak(big) == dict.fromkeys(POOL, 1)
    small = run_threads(str(tmp_path / "small"), 90, 1, 4, hold=(0.005, 0.02), need_mb=300)
    assert per_gpu_peak(small) == dict.fromkeys(POOL, 3)


def test_a_job_too_big_for_any_gpu_still_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LOTTO_GPU_MEM_MB", "1000")
    with acquire(1, ("0",), str(tmp_path), timeout=1, per_gpu=2, need_mb=5000) as slot:
        assert slot.ids == ("0",)
        with pytest.raises(TimeoutError):  # nothing joins it
            with acquire(1, ("0",), str(tmp_path), timeout=0.2, per_gpu=2, need_mb=10):
                pass


def test_wrapped_jobs_with_k_slots(tmp_path):
    """16 wrapper processes, -k 2 over 2 fake GPUs: at most 2 per GPU at once, both GPUs used,
    slots logged."""
    log_path = tmp_path / "slots.jsonl"
    env = wrapper_env(tmp_path, LOTTO_GPUS="0,1", LOTTO_GPU_SLOT_LOG=str(log_path))
    jobs = [
        subprocess.Popen(WRAPPER + ["-n", "1", "-k", "2", "--job", f"j{i}", "--"] + py("import time; time.sleep(0.15)"),
                         env=env)
        for i in range(16)
    ]
    assert [job.wait(timeout=60) for job in jobs] == [0] * 16
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(log) == 16
    peaks = per_gpu_peak([(tuple(e["gpus"]), e["start"], e["end"]) for e in log])
    assert peaks == {"0": 2, "1": 2}
    assert {(e["gpus"][0], e["slots"][0]) for e in log} <= {("0", 0), ("0", 1), ("1", 0), ("1", 1)}


HOLDER = """
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def test_jobs_killed_mid_way_free_their_slots(tmp_path):
    """Fill both slots of GPU 0; SIGKILL one job's whole process group: its slot is free at
    once (the next job starts), the other slot stays held."""
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")
    lock_dir = env["LOTTO_GPU_LOCK_DIR"]
    holders = []
    try:
        for i in range(2):
            pid_file = tmp_path / f"holder{i}.pid"
            wrapper = subprocess.Popen(WRAPPER + ["-n", "1", "-k", "2", "--"] + py(HOLDER, str(pid_file)),
                                       env=env, start_new_session=True)
            holders.append((wrapper, int(wait_for_file(pid_file))))
        assert jobs_on_gpu(lock_dir, "0", 2) == 2
        full = run_wrapper(["-n", "1", "-k", "2", "--timeout", "0.3", "--", "true"], env)
        assert full.returncode == 3  # no third job on a 2-slot GPU
        killed, survivor = holders
        os.killpg(killed[0].pid, signal.SIGKILL)
        killed[0].wait(timeout=10)
        started = time.monotonic()
        result = run_wrapper(["-n", "1", "-k", "2", "--timeout", "10", "--"] + py("print('ran')"), env)
        assert result.returncode == 0 and result.stdout.strip() == "ran"
        assert time.monotonic() - started < 5
        assert jobs_on_gpu(lock_dir, "0", 2) == 1  # the survivor still holds its slot
    finally:
        for wrapper, child in holders:
            if is_running(child):
                os.kill(child, signal.SIGKILL)
            if wrapper.poll() is None:
                os.killpg(wrapper.pid, signal.SIGKILL)
                wrapper.wait(timeout=10)


def test_bad_slot_count_is_refused(tmp_path):
    result = run_wrapper(["-n", "1", "-k", "0", "--", "true"], wrapper_env(tmp_path, LOTTO_GPUS="0"))
    assert result.returncode == 2 and "must be >= 1" in result.stderr


# ------------------------------------------------------------------------------------ energy


def test_energy_meter_shares_each_interval_by_the_jobs_running_then():
    """Board counter readings 0, 1000, 3000, 6000 mJ with 1, 2, 3 jobs on the GPU at the end of
    each interval: this job's share is 1000/1 + 2000/2 + 3000/3 mJ."""
    readings = iter([0, 1000, 3000, 6000])
    jobs = iter([1, 2, 3])
    meter = EnergyMeter(["0"], lambda gpu: next(readings), lambda gpu: next(jobs), interval=3600)
    meter.sample()
    meter.sample()
    record = meter.stop()  # the third interval is booked by stop
    assert record["joules"] == pytest.approx(3.0)
    assert record["board_joules"] == pytest.approx(6.0)
    assert record["samples"] == 3 and record["mean_jobs"] == pytest.approx(2.0)


def test_energy_meter_sums_gpus_and_ignores_a_counter_reset():
    counters = {"0": iter([100, 400]), "1": iter([5000, 10])}  # GPU 1's counter was reset
    meter = EnergyMeter(["0", "1"], lambda gpu: next(counters[gpu]), lambda gpu: 1, interval=3600)
    record = meter.stop()
    assert record["board_joules"] == pytest.approx(0.3) and record["joules"] == pytest.approx(0.3)
    assert record["gpus"] == ["0", "1"]


FAKE_PYNVML = '''
"""A fake NVML: every GPU draws 100 W from the moment of the first reading."""
import time
_T0 = 1.7e9


def nvmlInit():
    pass


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetTotalEnergyConsumption(handle):
    return int((time.time() - _T0) * 100_000)  # mJ: 100 W
'''


def fake_nvml_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    fake = tmp_path / "fake_nvml"
    fake.mkdir(exist_ok=True)
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    env = wrapper_env(tmp_path, LOTTO_ENERGY_SAMPLE_S="0.05", **variables)
    env["PYTHONPATH"] = f"{fake}:{env['PYTHONPATH']}"
    return env


def test_two_jobs_sharing_a_gpu_each_get_half_the_board_energy(tmp_path):
    """Two 1-second jobs side by side on one fake 100 W GPU (k=2): each records ~100 J of board
    energy and ~50 J as its share; a job alone gets the whole board energy."""
    env = fake_nvml_env(tmp_path, LOTTO_GPUS="0")
    files = [tmp_path / f"energy{i}.json" for i in range(2)]
    jobs = [subprocess.Popen(WRAPPER + ["-n", "1", "-k", "2", "--energy", str(f), "--"] + py("import time; time.sleep(1.0)"),
                             env=env) for f in files]
    assert [job.wait(timeout=30) for job in jobs] == [0, 0]
    for path in files:
        record = json.loads(path.read_text())
        assert record["board_joules"] == pytest.approx(100 * record["seconds"], rel=0.02)
        assert record["joules"] == pytest.approx(record["board_joules"] / 2, rel=0.15)
        assert record["gpus"] == ["0"]
    alone = tmp_path / "alone.json"
    result = run_wrapper(["-n", "1", "-k", "2", "--energy", str(alone), "--"] + py("import time; time.sleep(0.3)"), env)
    assert result.returncode == 0, result.stderr
    record = json.loads(alone.read_text())
    assert record["joules"] == pytest.approx(record["board_joules"]) and record["mean_jobs"] == 1


def test_no_energy_file_without_nvml_or_on_cpu_and_a_stale_one_is_removed(tmp_path):
    stale = tmp_path / "energy.json"
    stale.write_text("{}")
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")  # no pynvml on the path in CI
    result = run_wrapper(["-n", "1", "--energy", str(stale), "--", "true"], env)
    assert result.returncode == 0
    assert not stale.exists()  # (a real NVML without a GPU yields no file either)
    cpu = tmp_path / "cpu.json"
    result = run_wrapper(["-n", "0", "--energy", str(cpu), "--", "true"], fake_nvml_env(tmp_path))
    assert result.returncode == 0 and not cpu.exists()
