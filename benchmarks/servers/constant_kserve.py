"""The KServe model server with a model that returns a constant: the ceiling KServe itself
sets for any predictor. Run by benchmarks/serving.py."""

import argparse
import sys

args = argparse.ArgumentParser()
args.add_argument("--model-name", default="anomaly-detector")
args.add_argument("--http-port", type=int, required=True)
opts = args.parse_args()
sys.argv = sys.argv[:1]  # kserve parses argv at import

import kserve  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402


class Constant(kserve.Model):
    def load(self):
        self.ready = True
        return True

    def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            out = InferOutput(name="predictions", shape=[1], datatype="INT64", data=[1])
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id="c")
        return {"predictions": [1], "anomaly_scores": [0.5]}


model = Constant(opts.model_name)
model.load()
kserve.ModelServer(http_port=opts.http_port, enable_grpc=False).start([model])
