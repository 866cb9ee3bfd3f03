"""The operator's side: the HTTP health/metrics listener (``http``) and Prometheus metrics
(``metrics``). The generated admin gRPC code lives in ``extproc.api``."""
