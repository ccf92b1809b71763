"""Model compute (no HTTP): one row and batches, scikit-learn vs the flattened forest, plus
onnxruntime (skl2onnx) and treelite when they are installed, with parity against
scikit-learn; then the window columns, C (model/_window_stats.c) vs numpy, for one served row
and for 700,000 training rows on one thread; then what the reconstruction error
(--reconstruction-variance 0.9) adds to the raw scores of a served tick.
Usage: .venv/bin/python benchmarks/scoring.py"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, train_default_model  # noqa: E402

from anomaly_mlops.model.artifacts import load_model_dir  # noqa: E402


def time_calls(fn, rows, repeats):
    for i in range(20):
        fn(rows[i % len(rows)])
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(rows[i % len(rows)])
        out.append((time.perf_counter() - start) * 1000)
    return out


def main():
    model_dir, prepared = train_default_model()
    model = load_model_dir(model_dir)
    rows = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()
    X = model.transform.apply(rows)  # the forest's input: the metrics and their window columns
    reference = -model.pipeline.score_samples(X)
    scorers = {
        "scikit-learn": lambda r: -model.pipeline.score_samples(r),
        "flattened forest": model.fast.anomaly_scores,
    }
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx

        onx = to_onnx(model.pipeline, X[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
        session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        offset = model.pipeline.named_steps["iforest"].offset_
        name = session.get_inputs()[0].name
        scorers["onnxruntime"] = lambda r: -(session.run(None, {name: r.astype(np.float32)})[1].ravel() + offset)
    except ImportError:
        print("onnxruntime/skl2onnx not installed: skipped (pip install onnxruntime skl2onnx to compare)")
    try:
        import treelite
        import treelite.sklearn

        tl = treelite.sklearn.import_model(model.pipeline.named_steps["iforest"])
        scaler = model.pipeline.named_steps["scaler"]
        scorers["treelite gtil"] = lambda r: (
            np.asarray(treelite.gtil.predict(tl, scaler.transform(r).astype(np.float32))).ravel().astype(np.float64)
        )
    except ImportError:
        print("treelite not installed: skipped (pip install treelite to compare)")

    print(f"model: 100 trees, {len(model.schema)} metrics -> {X.shape[1]} columns; {len(X)} holdout rows\n")
    print(f"{'scorer':18s} {'max |score - sklearn|':>22s}   single row")
    for label, fn in scorers.items():
        gap = np.abs(fn(X) - reference).max()
        single = time_calls(fn, [X[i : i + 1] for i in range(1000)], 2000)
        print(f"{label:18s} {gap:22.3g}   {percentiles(single)}")
    print()
    for size in (10, 100, 512, 1000, 5000):
        batches = [X[i : i + size] for i in range(0, len(X) - size, size)][:20]
        line = f"batch {size:5d}: "
        for label in ("scikit-learn", "flattened forest"):
            t = time_calls(scorers[label], batches, 20)
            line += f"{label} p50 {np.percentile(t, 50):7.2f} ms   "
        print(line)
    single = time_calls(model.anomaly_scores, [rows[i : i + 1] for i in range(1000)], 2000)
    print(f"\nLoadedModel.anomaly_scores (features and forest, no history), one row: {percentiles(single)}")
    window_columns(model, rows)
    reconstruction_cost(prepared, rows)


def reconstruction_cost(prepared, rows):
    """LoadedModel.raw_scores of one tick's rows (the forest's input ready) for the default
    model and the same data trained with the reconstruction error added."""
    from anomaly_mlops.model.artifacts import load_serving_model
    from anomaly_mlops.params import TrainParams
    from anomaly_mlops.steps.train import train

    print("\nraw scores of a served tick (forest walk, plus the reconstruction error where the model has it):")
    for variance in (0.0, 0.9):
        out = Path(prepared.train_path).parent.parent / f"model-reconstruction-{variance}"
        model = load_serving_model(
            train(str(prepared.train_path), out, TrainParams(reconstruction_variance=variance)).model_dir
        )
        features = model.transform.apply(rows)
        line = f"  reconstruction variance {variance}:"
        for size in (1, 8, 100):
            ticks = [features[i : i + size] for i in range(0, 1000, size)]
            line += f"  {size} rows p50 {np.percentile(time_calls(model.raw_scores, ticks, 5000), 50) * 1000:6.1f} us"
        print(line)


def window_columns(model, rows):
    """The default transform's window columns in C and with numpy: the same bits, and the time."""
    from anomaly_mlops.model import features
    from anomaly_mlops.model.chunks import threads

    transform, reach = model.transform, model.transform.window
    if features.window_stats_c is None:
        print("\nwindow columns: the C extension was not built (no C compiler at install); numpy only")
        return
    served = [rows[i : i + reach] for i in range(1000)]
    training = np.tile(rows, (700_000 // len(rows) + 1, 1))[:700_000]
    print(f"\nwindow columns ({transform.window}-row window, {', '.join(transform.columns)}):")
    results, built = {}, features.window_stats_c
    for label, module in (("C", built), ("numpy", None)):
        features.window_stats_c = module
        try:
            one = time_calls(lambda r: transform.apply(r, last=1), served, 5000)
            with threads(1):
                start = time.perf_counter()
                results[label] = transform.apply(training)
                seconds = time.perf_counter() - start
        finally:
            features.window_stats_c = built
        print(f"  {label:6s} one served row {percentiles(one)}; 700,000 rows on one thread {seconds:.2f} s")
    same = np.array_equal(results["C"].view(np.uint64), results["numpy"].view(np.uint64))
    print(f"  C and numpy bit for bit: {same}")


if __name__ == "__main__":
    main()
