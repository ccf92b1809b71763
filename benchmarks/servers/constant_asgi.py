"""A raw ASGI app on uvicorn (httptools, uvloop, no access log) that reads the body and
answers a constant: the limit for any Python server on this stack. Run by benchmarks/serving.py."""

import argparse

import uvicorn

args = argparse.ArgumentParser()
args.add_argument("--model-name", default="anomaly-detector")
args.add_argument("--http-port", type=int, required=True)
opts = args.parse_args()
READY = b'{"name":"%s","ready":true}' % opts.model_name.encode()
ANSWER = b'{"predictions":[1],"anomaly_scores":[0.5]}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = scope["method"] == "POST"
    while more:
        more = (await receive()).get("more_body", False)
    body = ANSWER if scope["method"] == "POST" else READY
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


uvicorn.run(
    app, host="127.0.0.1", port=opts.http_port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
)
