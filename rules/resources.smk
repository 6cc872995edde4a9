# What a training job asks of the machine: threads, memory and GPUs, defined once for every
# training rule (rules/train.smk, rules/earlybird.smk, rules/presets.smk), and the options
# of lotto.gpu_slot, which runs each of them.


def use_gpu(spec):
    """config use_gpu: auto asks lotto.gpu_slot.sees_cuda_device (device files, no torch)."""
    if spec.training.device != "auto":
        return spec.training.device == "cuda"
    if USE_GPU == "auto":
        return sees_cuda_device()
    return USE_GPU == "true"


def _job_spec(wildcards):
    if "experiment" in wildcards.keys():
        return EXPERIMENTS[wildcards.experiment]
    return DENSE[wildcards.key]


def processes(wildcards):
    """Processes of one training (training.devices per node x nodes; lotto.core.distributed)."""
    training = _job_spec(wildcards).training
    return training.devices * training.nodes


def gpus(wildcards):
    """resources.gpu_slot: a GPU job takes one slot on each GPU of its processes."""
    return int(use_gpu(_job_spec(wildcards))) * processes(wildcards)


def whole_gpus(wildcards):
    """resources.gpu: GPUs a job holds alone. With gpu_slots k > 1 a job holds a slot instead
    (resources.gpu_slot), so `--resources gpu=4` still counts GPUs and
    `--resources gpu_slot=4k` bounds the jobs sharing them."""
    return gpus(wildcards) if GPU_SLOTS == 1 else 0


TRAINING_RESOURCES = {"mem_mb": TRAINING_MEM_MB, "gpu": whole_gpus, "gpu_slot": gpus}

# With an experiment trained in several processes, what SLURM needs to place them
# (snakemake-executor-plugin-slurm): one task per process (per GPU), the nodes, and `mpi`, which
# makes the job step run the command itself, so that lotto.gpu_slot's srun gets every task.
if any(
    s.training.devices * s.training.nodes > 1
    for s in [*EXPERIMENTS.values(), *DENSE.values()]
):
    TRAINING_RESOURCES |= {
        "tasks": processes,
        "tasks_per_gpu": 1,
        "nodes": lambda w: _job_spec(w).training.nodes,
        "mpi": lambda w: "srun" if processes(w) > 1 else "",
    }


_MEMORY_MB = {}


def slot_options(wildcards, resources):
    """lotto.gpu_slot's options: GPUs, slots per GPU and, when GPUs are shared, the job's
    estimated GPU memory (lotto.gpu_memory; imports torch once, only then). Taking the
    job's resources makes it derived: not a params rerun trigger (where jobs run)."""
    n = resources.gpu_slot
    options = f"-n {n} -k {GPU_SLOTS}"
    training = _job_spec(wildcards).training
    if training.devices * training.nodes > 1:
        options += f" --processes {training.devices} --nodes {training.nodes}"
    if n and GPU_SLOTS > 1:
        spec = _job_spec(wildcards)
        if spec.dense_key not in _MEMORY_MB:
            from lotto.gpu_memory import estimate_mb

            _MEMORY_MB[spec.dense_key] = estimate_mb(spec)
        options += f" --mem-mb {_MEMORY_MB[spec.dense_key]}"
    return options
