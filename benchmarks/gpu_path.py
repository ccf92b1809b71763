"""The GPU scoring path (gpu_scoring.py) on a GPU node: parity with scikit-learn on the GPU,
and batch latency of the torch path against the CPU flattened forest and scikit-learn, 1 to
100k rows, default model. GPU times include the host->device and device->host copies, as in
validate. Usage: python benchmarks/gpu_path.py [--device cpu] (needs torch; without a GPU it says so
and exits, unless --device cpu runs the same code on torch's CPU device)."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import train_default_model  # noqa: E402

from anomaly_mlops.model.artifacts import load_model_dir  # noqa: E402
from anomaly_mlops.sources.files import load_dataset  # noqa: E402

SIZES = (1, 100, 1_000, 10_000, 100_000)


def median_ms(fn, rows, repeats, sync=lambda: None) -> float:
    fn(rows)  # warm-up: kernels, allocator, caches
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(rows)
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


def main() -> int:
    try:
        import torch
    except ImportError:
        print("torch is not installed (pip install 'anomaly-mlops[gpu]')")
        return 1
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", help="torch device; cpu runs the same code without a GPU")
    device = parser.parse_args().device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to measure (--device cpu runs the code on the CPU)")
        return 1
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    from anomaly_mlops.model.gpu_scoring import TorchForest

    model_dir, prepared = train_default_model()
    model = load_model_dir(model_dir)
    holdout = load_dataset(str(prepared.holdout_path), model.schema)
    features = model.transform.apply_by_entity(holdout.X, holdout.entities)
    gpu = TorchForest(model.fast, device)
    print(
        f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (torch)'}; torch {torch.__version__}; model {model.metadata['forest']}"
    )
    print(f"features: {features.shape[1]} columns ({model.transform.window or 0}-row window)")

    rng = np.random.default_rng(0)
    big = features[rng.integers(0, len(features), size=max(SIZES))]
    reference = -model.pipeline.score_samples(big)
    gap = float(np.max(np.abs(gpu.anomaly_scores(big) - reference)))
    print(f"parity on {len(big):,} rows: max |GPU - scikit-learn| = {gap:.3g}")
    if gap > 1e-9:
        print("PARITY FAILED")
        return 2

    print(f"{'rows':>8} {'sklearn ms':>11} {'cpu flat ms':>12} {'torch ms':>9} {'torch rows/s':>12} {'cpu rows/s':>12}")
    for size in SIZES:
        rows = big[:size]
        repeats = 50 if size <= 1_000 else 10
        sk = median_ms(model.pipeline.score_samples, rows, min(repeats, 10))
        cpu = median_ms(model.fast.anomaly_scores, rows, repeats)
        on_gpu = median_ms(gpu.anomaly_scores, rows, repeats, sync)
        print(
            f"{size:>8,} {sk:>11.3f} {cpu:>12.3f} {on_gpu:>9.3f} {size / on_gpu * 1000:>12,.0f} {size / cpu * 1000:>12,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
