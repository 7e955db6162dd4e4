"""GPUs and other indexed devices on a node: the built-in plugin that finds NVIDIA GPUs (`GpuPlugin`), and
the environment that names the devices a job was given (`device_env`: README, GPUs and limits)."""

import contextlib
import glob
import os
import re
import subprocess

NVIDIA_SMI_TIMEOUT = 5.0  # a hung driver must not hold a node daemon's start-up for long


def device_env(devices: dict | None) -> dict[str, str]:
    env = {f"GRUN_{re.sub(r'[^A-Z0-9_]', '_', name.upper())}S": ",".join(ids) for name, ids in (devices or {}).items()}
    if "gpu" in (devices or {}):
        env["CUDA_VISIBLE_DEVICES"] = env["GRUN_GPUS"]
    return env


def nvidia_gpus(proc: str = "/proc/driver/nvidia/gpus") -> list[tuple[str, str]]:
    """(index, model) of each NVIDIA GPU: from `nvidia-smi -L`, else from the driver's /proc files."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT).stdout
        if found := re.findall(r"(?m)^GPU (\d+): (.+?)(?: \(UUID: [^)]*\))?\s*$", out):
            return found
    gpus = []
    for info in sorted(glob.glob(os.path.join(proc, "*", "information"))):
        try:
            with open(info) as f:
                fields = dict(re.findall(r"(?m)^([^:\n]+):\s*(.*?)\s*$", f.read()))
        except OSError:
            continue
        gpus.append((fields.get("Device Minor", str(len(gpus))), fields.get("Model", "unknown")))
    return gpus


class GpuPlugin:
    """Offers the node's NVIDIA GPUs as the indexed resource `gpu` and their model as the label `gpu_model`."""
    budget = NVIDIA_SMI_TIMEOUT + 1  # (grun.plugins' time budget for a hook: nvidia-smi may take seconds)

    def node_resources(self) -> dict:
        if not (gpus := nvidia_gpus()):
            return {}
        return {"resources": {"gpu": [index for index, _ in gpus]},
                "labels": {"gpu_model": ",".join(sorted({model for _, model in gpus}))}}
