"""The data path: the pure per-request state machine (``machine``), the credential scrubber
(``scrub``), the runtime that assembles a gateway from the configuration (``runtime``) and the
gRPC ext_proc servicer that adapts Envoy's messages to the machine (``servicer``)."""
