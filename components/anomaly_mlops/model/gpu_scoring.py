"""The GPU scoring path measured by validate: the flattened forest (fastforest.py) in
torch, on CUDA when a GPU is present. scikit-learn has no GPU path; this shows what a GPU
node would buy for batch scoring. Same arithmetic as the CPU path (float32 inputs against
float64 thresholds, float64 sums), checked for parity before timing.
"""

from __future__ import annotations

import time

import numpy as np

from anomaly_mlops.model.fastforest import CompiledForest


class TorchForest:
    def __init__(self, forest: CompiledForest, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        as_tensor = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        self.mean, self.scale = as_tensor(forest.mean), as_tensor(forest.scale)
        self.feature, self.threshold = as_tensor(forest.feature).long(), as_tensor(forest.threshold)
        self.left, self.right = as_tensor(forest.left).long(), as_tensor(forest.right).long()
        self.leaf_value, self.roots = as_tensor(forest.leaf_value), as_tensor(forest.roots).long()
        self.depth, self.denominator = forest.depth, forest.denominator

    def anomaly_scores(self, X: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            rows = np.asarray(X, dtype=np.float64)
            if not rows.flags.writeable:  # torch refuses to share read-only memory (Parquet-backed frames)
                rows = rows.copy()
            x = torch.as_tensor(rows, device=self.device)
            scaled = ((x - self.mean) / self.scale).to(torch.float32)
            nodes = self.roots.expand(len(x), -1).clone()
            for _ in range(self.depth):
                values = torch.gather(scaled, 1, self.feature[nodes]).to(torch.float64)
                nodes = torch.where(values <= self.threshold[nodes], self.left[nodes], self.right[nodes])
            depths = self.leaf_value[nodes].sum(dim=1)
            return (2.0 ** (-depths / self.denominator)).cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def measure_gpu_path(
    forest: CompiledForest | None,
    X: np.ndarray,
    reference: np.ndarray,
    batch_sizes=(1, 1000, 10000),
    repeats: int = 20,
    device: str | None = None,
) -> dict:
    """Latency of the torch path on ``device`` (default: CUDA if present). Returns a dict
    that says why nothing was measured when it could not be."""
    if device is None and not nvidia_device_visible():
        # Asked before importing torch: importing it costs seconds on every node without a GPU.
        return {"measured": False, "reason": "no GPU was seen on this node (no /dev/nvidia* device)"}
    try:
        import torch
    except ImportError:
        return {"measured": False, "reason": "torch is not installed (pip install 'anomaly-mlops[gpu]')"}
    if device is None:
        if not torch.cuda.is_available():
            return {"measured": False, "reason": "no CUDA device visible to torch"}
        device = "cuda"
    if forest is None:
        return {"measured": False, "reason": "this model cannot be flattened; scikit-learn only"}
    gpu = TorchForest(forest, device)
    n = min(len(X), len(reference), 5000)
    gap = float(np.max(np.abs(gpu.anomaly_scores(X[:n]) - reference[:n])))
    result = {
        "measured": True,
        "device": device,
        "device_name": _device_name(torch, device),
        "max_abs_diff_vs_cpu": gap,
        "batches": {},
    }
    rng = np.random.default_rng(0)
    for size in batch_sizes:
        batch = X[rng.integers(0, len(X), size=size)]
        gpu.anomaly_scores(batch)  # warm-up (kernels, allocator)
        gpu.synchronize()
        timings = np.empty(repeats)
        for i in range(repeats):
            start = time.perf_counter()
            gpu.anomaly_scores(batch)  # includes host->device and device->host copies
            gpu.synchronize()
            timings[i] = (time.perf_counter() - start) * 1000
        result["batches"][str(size)] = {
            "p50": round(float(np.percentile(timings, 50)), 4),
            "p99": round(float(np.percentile(timings, 99)), 4),
            "rows_per_second": round(size / float(np.median(timings)) * 1000, 1),
        }
    return result


def nvidia_device_visible() -> bool:
    """A GPU this process may use: an NVIDIA device node, and CUDA_VISIBLE_DEVICES not empty."""
    import glob
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _device_name(torch, device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu (torch)"
