"""Parse kubernetes platform configs strictly with the protos of an installed kfp-kubernetes
release, as the KFP 2.0.5/2.2.0 drivers do. Runs inside that release's own venv.

stdin: {"<executor>": <KubernetesExecutorConfig as JSON>, ...}
stdout: {"<executor>": null | "<parse error>", ...}
"""

import importlib.util
import json
import sys
import sysconfig
from pathlib import Path

from google.protobuf import json_format

path = Path(sysconfig.get_paths()["purelib"]) / "kfp" / "kubernetes" / "kubernetes_executor_config_pb2.py"
spec = importlib.util.spec_from_file_location("kubernetes_executor_config_pb2", path)
protos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(protos)  # the generated module alone: kfp.kubernetes' __init__ needs kfp

results = {}
for executor, config in json.load(sys.stdin).items():
    try:
        json_format.ParseDict(config, protos.KubernetesExecutorConfig(), ignore_unknown_fields=False)
        results[executor] = None
    except json_format.ParseError as exc:
        results[executor] = str(exc)
json.dump(results, sys.stdout)
