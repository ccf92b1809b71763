"""The model servers: request protocol and scoring (V1, V2), per-entity history, the lean ASGI server and the KServe model server."""
