"""Prometheus metrics, served on the admin port. Labels never carry secrets or user input
beyond bounded sets (provider names come from the config; error codes are ours)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "exposition"]


def exposition(registry: CollectorRegistry) -> bytes:
    """The text for ``/metrics``: with worker processes (prometheus_client's multiprocess
    directory is set), the sum over every worker; else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return bytes(generate_latest(merged))
    return bytes(generate_latest(registry))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, worker: int = 0) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        #: ext_proc streams per worker process (``workers:``): shows how Envoy spreads them.
        self.worker_streams = Counter(
            "extproc_worker_streams_total", "ext_proc Process streams handled, by worker process.", ["worker"],
            registry=r,
        )
        self.worker_streams_here = self.worker_streams.labels(str(worker))
        self.requests = Counter(
            "extproc_requests_total",
            "HTTP requests seen by the ext_proc server, by provider and outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "extproc_auth_failures_total", "Requests refused for identity reasons, by code.", ["code"], registry=r
        )
        self.redis_up = Gauge(
            "extproc_redis_up", "1 when the last Redis ping (every 2 s at most, on probes) succeeded.", registry=r
        )
        self.streams_inflight = Gauge(
            "extproc_streams_inflight", "ext_proc Process streams currently open.", registry=r,
            multiprocess_mode="livesum",
        )
        self.stream_errors = Counter(
            "extproc_stream_errors_total", "Process streams that ended with an error, by kind.", ["kind"], registry=r
        )
        self.secrets_scrubbed = Counter(
            "extproc_response_secrets_scrubbed_total",
            "Responses in which an injected credential was found and replaced.",
            ["provider"],
            registry=r,
        )
        self.policy_decisions = Counter(
            "extproc_policy_decisions_total", "Policy outcomes by action, deciding rule and mode.",
            ["action", "rule", "mode"], registry=r,
        )
        self.policy_shadow_matches = Counter(
            "extproc_policy_shadow_matches_total", "Shadow-mode rule matches (what would have been enforced).",
            ["action", "rule"], registry=r,
        )
        self.policy_seconds = Histogram(
            "extproc_policy_evaluation_seconds", "Time to evaluate the policy on one request.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05), registry=r,
        )
        self.masked = Counter(
            "extproc_masked_entities_total", "Values masked, by direction and entity type.",
            ["direction", "entity"], registry=r,
        )
        self.budget_refusals = Counter(
            "extproc_budget_refusals_total", "Requests refused by a budget, by budget and status.",
            ["budget", "status"], registry=r,
        )
        self.config_reloads = Counter(
            "extproc_config_reloads_total", "Configuration reloads by result (applied, rejected).", ["result"],
            registry=r,
        )
        self.approvals = Counter(
            "extproc_approval_holds_total", "Requests that needed approval, by how the hold ended.", ["state"],
            registry=r,
        )
        self.records = Gauge(
            "extproc_records", "Session records since start: written, spooled, failed, flushed, spool_pending.",
            ["kind"], registry=r, multiprocess_mode="livesum",
        )
        self.tool_decisions = Counter(
            "extproc_tool_decisions_total", "Tool calls (MCP and model-emitted) by action, rule, mode and server.",
            ["action", "rule", "mode", "server"], registry=r,
        )
        self.tools_hidden = Counter(
            "extproc_tools_hidden_total", "Tools removed from tools/list answers.", ["server"], registry=r,
        )
        self.tool_pin_mismatches = Counter(
            "extproc_tool_pin_mismatches_total", "Pinned tools whose definition changed.", ["server"], registry=r,
        )
        self.inspections = Counter(
            "extproc_offloaded_inspections_total",
            "Large request bodies inspected in a worker process, by outcome (ok, timeout, error).",
            ["outcome"], registry=r,
        )
        self.inspections_inflight = Gauge(
            "extproc_offloaded_inspections_inflight", "Request bodies being inspected in (or queued for) a worker.",
            registry=r,
        )
        self.message_seconds = Histogram(
            "extproc_message_seconds",
            "Time to decide one ext_proc message, by message kind.",
            ["kind"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
            registry=r,
        )
