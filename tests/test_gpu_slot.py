"""lotto.gpu_slot: one job per GPU on a shared box, checked with fake GPU ids (no GPU needed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from lotto.gpu_slot import acquire, parse_gpu_list, resolve_pool, sees_cuda_device

REPO_ROOT = Path(__file__).resolve().parents[1]
WRAPPER = [sys.executable, "-m", "lotto.gpu_slot"]

# Child used by the many-jobs test: sleep, then append [job, CUDA_VISIBLE_DEVICES, start, end].
RECORDING_CHILD = """
import json, os, sys, time
start = time.monotonic()
time.sleep(float(sys.argv[1]))
end = time.monotonic()
record = [sys.argv[3], os.environ["CUDA_VISIBLE_DEVICES"], start, end]
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, (json.dumps(record) + "\\n").encode())
"""

# Child that writes its pid to argv[1], then sleeps until killed.
PID_THEN_SLEEP_CHILD = """
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def wrapper_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """Environment for a wrapper run: private lock dir, no inherited GPU or SLURM settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LOTTO_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "LOTTO_GPU_SLOT_LOG")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["LOTTO_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    env.update(variables)
    return env


def run_wrapper(args: list[str], env: dict[str, str], timeout: float = 30):
    return subprocess.run(WRAPPER + args, env=env, capture_output=True, text=True, timeout=timeout)


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def clashes(allocations: list[tuple[tuple[str, ...], float, float]]) -> int:
    """Allocations that started on a GPU before an earlier holder of that GPU ended."""
    per_gpu: dict[str, list[tuple[float, float]]] = {}
    for gpus, start, end in allocations:
        for gpu in gpus:
            per_gpu.setdefault(gpu, []).append((start, end))
    count = 0
    for intervals in per_gpu.values():
        latest_end = float("-inf")
        for start, end in sorted(intervals):
            count += start < latest_end
            latest_end = max(latest_end, end)
    return count


def peak_gpus_in_use(allocations: list[tuple[tuple[str, ...], float, float]]) -> int:
    """Most GPUs held at one instant (an end at the same instant as a start frees first)."""
    events = []
    for gpus, start, end in allocations:
        events += [(start, 1, len(gpus)), (end, 0, -len(gpus))]
    in_use = peak = 0
    for _, _, change in sorted(events):
        in_use += change
        peak = max(peak, in_use)
    return peak


def test_clash_and_peak_helpers_detect_what_they_claim():
    """The checks below are only as good as these helpers, so show they can fail."""
    overlapping = [(("0",), 0.0, 2.0), (("0",), 1.0, 3.0), (("1",), 1.5, 2.5)]
    assert clashes(overlapping) == 1
    assert peak_gpus_in_use(overlapping) == 3
    back_to_back = [(("0",), 0.0, 1.0), (("0",), 1.0, 2.0)]
    assert clashes(back_to_back) == 0
    assert peak_gpus_in_use(back_to_back) == 1


def test_many_wrapped_jobs_never_share_a_gpu(tmp_path):
    """24 wrapper processes over 4 fake GPUs: no overlap on a GPU, and real parallelism."""
    records_path, log_path = tmp_path / "records.jsonl", tmp_path / "slots.jsonl"
    env = wrapper_env(tmp_path, LOTTO_GPUS="0,1,2,3", LOTTO_GPU_SLOT_LOG=str(log_path))
    rng = random.Random(0)
    jobs = [
        subprocess.Popen(
            WRAPPER
            + ["-n", "1", "--job", f"job{index}", "--"]
            + py(RECORDING_CHILD, str(rng.uniform(0.02, 0.08)), str(records_path), f"job{index}"),
            env=env,
        )
        for index in range(24)
    ]
    assert [job.wait(timeout=60) for job in jobs] == [0] * 24

    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert sorted(job for job, *_ in records) == sorted(f"job{index}" for index in range(24))
    assert {gpu for _, gpu, _, _ in records} <= {"0", "1", "2", "3"}
    child_allocations = [((gpu,), start, end) for _, gpu, start, end in records]
    assert clashes(child_allocations) == 0
    assert 1 < peak_gpus_in_use(child_allocations) <= 4

    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(entry["job"] for entry in log) == sorted(f"job{index}" for index in range(24))
    assert {entry["returncode"] for entry in log} == {0}
    by_job = {job: gpu for job, gpu, _, _ in records}
    assert all(entry["gpus"] == [by_job[entry["job"]]] for entry in log)
    assert clashes([(tuple(e["gpus"]), e["start"], e["end"]) for e in log]) == 0


def wait_for_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def is_running(pid: int) -> bool:
    """True while pid exists and is not a zombie (a killed orphan may wait to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def start_holder(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """A wrapper (in its own process group) whose child holds GPU 0 until killed."""
    pid_file = tmp_path / f"child-{time.monotonic_ns()}.pid"
    wrapper = subprocess.Popen(
        WRAPPER + ["-n", "1", "--"] + py(PID_THEN_SLEEP_CHILD, str(pid_file)),
        env=env,
        start_new_session=True,
    )
    return wrapper, int(wait_for_file(pid_file))


def assert_gpu_held(lock_dir: str) -> None:
    with pytest.raises(TimeoutError), acquire(1, ("0",), lock_dir, timeout=0.3):
        pass


def test_killing_wrapper_and_child_frees_the_gpu_for_the_next_wrapper(tmp_path):
    """SIGKILL leaves no stale lock: the kernel drops it, the next wrapper gets GPU 0 at once."""
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")
    wrapper, child_pid = start_holder(tmp_path, env)
    try:
        assert_gpu_held(env["LOTTO_GPU_LOCK_DIR"])
        os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
        started = time.monotonic()
        result = run_wrapper(
            ["-n", "1", "--timeout", "10", "--"]
            + py("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"),
            env,
        )
        waited = time.monotonic() - started
    finally:
        if is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert waited < 5, f"second wrapper needed {waited:.1f} s to get the freed GPU"


def test_child_outliving_its_killed_wrapper_keeps_the_gpu(tmp_path):
    """Documented choice: the child shares the lock, so the GPU stays held until it exits too."""
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")
    lock_dir = env["LOTTO_GPU_LOCK_DIR"]
    wrapper, child_pid = start_holder(tmp_path, env)
    try:
        os.kill(wrapper.pid, signal.SIGKILL)  # the wrapper only, not its process group
        wrapper.wait(timeout=10)
        assert is_running(child_pid)
        assert_gpu_held(lock_dir)
        os.kill(child_pid, signal.SIGKILL)
        with acquire(1, ("0",), lock_dir, timeout=5) as slot:
            assert slot.ids == ("0",)
    finally:
        if is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_separate_opens_in_one_process_conflict(tmp_path):
    """flock belongs to the open file description: two opens of one file exclude each other,
    so threads of one process (each acquire opens its own files) are kept apart too."""
    import fcntl

    path = tmp_path / "lock"
    first = os.open(path, os.O_RDONLY | os.O_CREAT)
    second = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(first)
        os.close(second)

    lock_dir = str(tmp_path / "locks")
    outcome: list[BaseException | tuple[str, ...]] = []

    def try_in_thread() -> None:
        try:
            with acquire(1, ("0",), lock_dir, timeout=0) as slot:
                outcome.append(slot.ids)
        except TimeoutError as error:
            outcome.append(error)

    with acquire(1, ("0",), lock_dir) as slot:
        assert slot.ids == ("0",)
        thread = threading.Thread(target=try_in_thread)
        thread.start()
        thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)


def test_multi_gpu_requests_do_not_deadlock(tmp_path):
    """All-or-nothing: 30 threads each wanting 2 of 3 GPUs all finish, without overlap."""
    lock_dir = str(tmp_path / "locks")
    allocations: list[tuple[tuple[str, ...], float, float]] = []

    def job() -> None:
        with acquire(2, ("0", "1", "2"), lock_dir, timeout=30, poll_interval=0.005) as slot:
            start = time.monotonic()
            time.sleep(0.002)
            allocations.append((slot.ids, start, time.monotonic()))

    threads = [threading.Thread(target=job) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allocations) == 30
    assert all(len(set(gpus)) == 2 for gpus, _, _ in allocations)
    assert clashes(allocations) == 0


STRESS_POOL = ("0", "1", "2", "3")


def stress_worker(
    lock_dir: str, seed: int, count: int
) -> list[tuple[tuple[str, ...], float, float]]:
    """One process: `count` threads at once, each taking one GPU for a random 0-3 ms."""
    rng = random.Random(seed)
    plans = [(rng.uniform(0, 0.02), rng.uniform(0, 0.003)) for _ in range(count)]
    allocations: list[tuple[tuple[str, ...], float, float]] = []

    def job(delay: float, hold: float) -> None:
        time.sleep(delay)
        with acquire(1, STRESS_POOL, lock_dir, timeout=60, poll_interval=0.02) as slot:
            start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
            time.sleep(hold)
            allocations.append((slot.ids, start, time.monotonic()))

    threads = [threading.Thread(target=job, args=plan) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return allocations


def test_stress_thousand_concurrent_allocations(tmp_path):
    """1,000 allocations at once from 4 processes x 250 threads: zero double bookings."""
    lock_dir = str(tmp_path / "locks")
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool(4) as workers:
        per_process = workers.starmap(stress_worker, [(lock_dir, seed, 250) for seed in range(4)])
    wall = time.monotonic() - started
    allocations = [allocation for allocations in per_process for allocation in allocations]
    peak, clash_count = peak_gpus_in_use(allocations), clashes(allocations)
    print(
        f"\ngpu_slot stress: jobs={len(allocations)} peak_concurrency={peak} "
        f"clashes={clash_count} wall={wall:.1f}s"
    )
    assert len(allocations) == 1000
    assert clash_count == 0
    assert 1 < peak <= len(STRESS_POOL)
    assert wall < 30


def test_steps_aside_under_slurm(tmp_path):
    """SLURM assigned the GPUs: the command is exec'd as is (same pid, CUDA_VISIBLE_DEVICES kept)."""
    env = wrapper_env(tmp_path, SLURM_JOB_ID="123", CUDA_VISIBLE_DEVICES="7", LOTTO_GPUS="0")
    wrapper = subprocess.Popen(
        WRAPPER
        + ["-n", "1", "--"]
        + py("import os; print(os.getpid(), os.environ['CUDA_VISIBLE_DEVICES'])"),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout, _ = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 0
    assert stdout.split() == [str(wrapper.pid), "7"]
    assert not (tmp_path / "locks").exists()


def test_zero_gpus_runs_a_cpu_job_without_a_pool(tmp_path):
    result = run_wrapper(
        ["-n", "0", "--"] + py("import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"),
        wrapper_env(tmp_path, CUDA_VISIBLE_DEVICES="0,1"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "''"


@pytest.mark.parametrize(
    ("args", "variables", "expected"),
    [
        (["-n", "3"], {"LOTTO_GPUS": "0,1"}, "asked for 3 GPU(s) but the pool has 2 (0,1)"),
        (["-n", "1"], {"LOTTO_GPUS": ""}, "none are available"),
        (["-n", "1"], {"LOTTO_GPUS": "0,,1"}, "LOTTO_GPUS='0,,1' has an empty entry"),
        (["-n", "two"], {"LOTTO_GPUS": "0"}, "must be a whole number >= 0, got 'two'"),
        (["-n", "-1"], {"LOTTO_GPUS": "0"}, "got '-1'"),
        (["-n", "1", "--timeout", "soon"], {"LOTTO_GPUS": "0"}, "got 'soon'"),
    ],
)
def test_bad_requests_fail_with_one_line_and_exit_2(tmp_path, args, variables, expected):
    result = run_wrapper(args + ["--", "true"], wrapper_env(tmp_path, **variables))
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_separator_or_command_is_a_one_line_error(tmp_path):
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")
    for args, expected in (
        (["-n", "1", "true"], "unrecognized"),
        (["-n", "1"], "missing '--'"),
        (["-n", "1", "--"], "no command"),
    ):
        result = run_wrapper(args, env)
        assert result.returncode == 2, args
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_exits_zero(tmp_path):
    result = run_wrapper(["--help"], wrapper_env(tmp_path))
    assert result.returncode == 0
    assert "LOTTO_GPUS" in result.stdout


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(7)", 7),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
    ],
)
def test_exit_code_of_the_command_is_passed_on(tmp_path, code, expected):
    result = run_wrapper(["-n", "1", "--"] + py(code), wrapper_env(tmp_path, LOTTO_GPUS="0"))
    assert result.returncode == expected


def test_command_that_cannot_start_exits_127(tmp_path):
    result = run_wrapper(
        ["-n", "1", "--", str(tmp_path / "no-such-program")], wrapper_env(tmp_path, LOTTO_GPUS="0")
    )
    assert result.returncode == 127
    assert "no-such-program" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_to_the_wrapper_reaches_the_command(tmp_path):
    """Snakemake cancels a job with SIGTERM to the wrapper; the command must hear it."""
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(60)\n"
    )
    wrapper = subprocess.Popen(
        WRAPPER + ["-n", "1", "--"] + py(child), env=wrapper_env(tmp_path, LOTTO_GPUS="0")
    )
    wait_for_file(ready)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=20) == 42


def test_timeout_while_gpus_are_busy_exits_3(tmp_path):
    env = wrapper_env(tmp_path, LOTTO_GPUS="0")
    with acquire(1, ("0",), env["LOTTO_GPU_LOCK_DIR"]):
        result = run_wrapper(["-n", "1", "--timeout", "0.2", "--", "true"], env)
    assert result.returncode == 3
    assert "no 1 free GPU(s) among 0" in result.stderr


def test_importing_the_module_does_not_import_torch(tmp_path):
    result = subprocess.run(
        py("import sys, lotto.gpu_slot; print('torch' in sys.modules)"),
        env=wrapper_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0, 1,2", ("0", "1", "2")),
        ("", ()),
        ("-1", ()),
        ("3,-1,4", ("3",)),
        ("GPU-ab:1", ("GPU-ab:1",)),
    ],
)
def test_parse_gpu_list(text, expected):
    assert parse_gpu_list(text, "LOTTO_GPUS") == expected


def test_parse_gpu_list_refuses_duplicates():
    with pytest.raises(ValueError, match="lists GPU\\(s\\) 1 twice"):
        parse_gpu_list("1,0,1", "LOTTO_GPUS")


def test_pool_precedence(monkeypatch):
    """LOTTO_GPUS beats CUDA_VISIBLE_DEVICES, which beats what torch sees."""
    assert resolve_pool({"LOTTO_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0"}) == ("2", "3")
    assert resolve_pool({"CUDA_VISIBLE_DEVICES": "0,5"}) == ("0", "5")
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(device_count=lambda: 3))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert resolve_pool({}) == ("0", "1", "2")


def test_acquire_refuses_impossible_requests(tmp_path):
    with pytest.raises(ValueError, match="asked for 2 GPU\\(s\\) but the pool has 1"):
        with acquire(2, ("0",), str(tmp_path)):
            pass
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        with acquire(-1, ("0",), str(tmp_path)):
            pass


def test_sees_cuda_device_from_device_files_and_visible_devices(tmp_path):
    """use_gpu: auto without torch: an NVIDIA device file, unless CUDA_VISIBLE_DEVICES hides all."""
    assert not sees_cuda_device({}, str(tmp_path))
    (tmp_path / "nvidiactl").touch()  # the driver's control file alone is no device
    assert not sees_cuda_device({}, str(tmp_path))
    (tmp_path / "nvidia0").touch()
    assert sees_cuda_device({}, str(tmp_path))
    assert sees_cuda_device({"CUDA_VISIBLE_DEVICES": "0"}, str(tmp_path))
    assert not sees_cuda_device({"CUDA_VISIBLE_DEVICES": ""}, str(tmp_path))
    assert not sees_cuda_device({"CUDA_VISIBLE_DEVICES": "-1"}, str(tmp_path))
    assert not sees_cuda_device({}, str(tmp_path / "missing"))
