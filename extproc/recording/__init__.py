"""The audit trail: the pure recorder and hash chain (``model``), the Redis store and spool
(``store``), the admin gRPC API (``api``) and the ``sessions`` CLI (``cli``)."""
