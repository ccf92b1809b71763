"""The design record's sample predictor, for comparison only: it calls predict and then
decision_function, walking the forest twice per request. Run by benchmarks/serving.py."""

import argparse
import sys

import joblib
import numpy as np

args = argparse.ArgumentParser()
args.add_argument("--model-dir", required=True)
args.add_argument("--model-name", default="anomaly-detector")
args.add_argument("--http-port", type=int, required=True)
opts = args.parse_args()
sys.argv = sys.argv[:1]  # kserve parses argv at import

import kserve  # noqa: E402


class ReferencePredictor(kserve.Model):
    def load(self):
        self.model = joblib.load(f"{opts.model_dir}/model.joblib")
        self.ready = True
        return True

    def predict(self, payload, headers=None, response_headers=None):
        X = np.asarray(payload["instances"], dtype=np.float64)
        predictions = self.model.predict(X)
        scores = self.model.decision_function(X)
        return {"predictions": (predictions == -1).astype(int).tolist(), "anomaly_scores": (-scores).tolist()}


model = ReferencePredictor(opts.model_name)
model.load()
kserve.ModelServer(http_port=opts.http_port, enable_grpc=False).start([model])
