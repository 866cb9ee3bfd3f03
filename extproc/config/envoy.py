"""Render Envoy's bootstrap from the extproc configuration, with envoy-data-plane's typed classes.

What the rendered config guarantees:

* every provider route runs through the ext_proc filter, which fails closed
  (``failure_mode_allow: false``): with the ext_proc server down, callers get 503 and the
  upstream sees nothing;
* upstream TLS is originated with SNI and the provider certificate is verified against the
  system CA bundle (and its DNS name);
* ``accept-encoding`` is removed before the upstream, so the ext_proc server always sees
  uncompressed bodies it can mask;
* no route or idle timeout cuts a long SSE stream, while ``max_message_timeout`` leaves room
  for approval holds and ``stream_idle_timeout`` outlasts them;
* paths are normalised (``..``, ``//``) before routing, so a prefix cannot be escaped.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsAutoHttpConfig,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as PbAny

from extproc.config.model import Config, ProviderConfig
from extproc.workers import STREAMS_PER_CONNECTION

__all__ = ["EXT_PROC_CLUSTER", "dump_yaml", "render_bootstrap", "render_envoy"]

EXT_PROC_CLUSTER = "extproc"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#: JSON access log: no headers, no query strings, nothing that could carry a credential.
_ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(WQ)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream": "%UPSTREAM_CLUSTER%",
    "duration_ms": "%DURATION%",
    "bytes_sent": "%BYTES_SENT%",
}


def _seconds(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


def _addr(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _http_options(*, http2: bool, tls_alpn: bool = False, max_streams: int | None = None) -> dict[str, PbAny]:
    if tls_alpn:
        opts = HttpProtocolOptions(
            auto_config=HttpProtocolOptionsAutoHttpConfig(
                http_protocol_options=Http1ProtocolOptions(),
                http2_protocol_options=Http2ProtocolOptions(),
            )
        )
    elif http2:
        h2 = Http2ProtocolOptions(max_concurrent_streams=max_streams) if max_streams else Http2ProtocolOptions()
        opts = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=h2))
    else:
        opts = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
        )
    return {_HTTP_OPTIONS_KEY: PbAny.pack(opts)}


def _cluster(name: str, host: str, port: int, connect_timeout: float, **kw: Any) -> Cluster:
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.LOGICAL_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(connect_timeout),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_addr(host, port)))])],
        ),
        **kw,
    )


def _provider_cluster(cfg: Config, p: ProviderConfig) -> Cluster:
    scheme, host, port, _ = p.upstream
    if scheme != "https":
        return _cluster(
            p.cluster_name, host, port, cfg.envoy.upstream_connect_timeout_seconds,
            typed_extension_protocol_options=_http_options(http2=False),
        )
    tls = UpstreamTlsContext(
        sni=host,
        common_tls_context=CommonTlsContext(
            tls_params=TlsParameters(tls_minimum_protocol_version=TlsParametersTlsProtocol.TLSv1_2),
            alpn_protocols=["h2", "http/1.1"],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=cfg.envoy.upstream_ca_file),
                match_typed_subject_alt_names=[
                    SubjectAltNameMatcher(
                        san_type=SubjectAltNameMatcherSanType.DNS, matcher=StringMatcher(exact=host)
                    )
                ]
                if not _is_ip(host)
                else [],
            ),
        ),
    )
    return _cluster(
        p.cluster_name,
        host,
        port,
        cfg.envoy.upstream_connect_timeout_seconds,
        transport_socket=TransportSocket(name="envoy.transport_sockets.tls", typed_config=PbAny.pack(tls)),
        typed_extension_protocol_options=_http_options(http2=False, tls_alpn=True),
    )


def _routes(cfg: Config, p: ProviderConfig) -> list[Route]:
    """``<prefix>/x`` goes to ``<base path>/x``; ``<prefix>`` itself to the base path (an MCP
    server is one URL, and clients are given the gateway prefix as that URL)."""
    return [_route(cfg, p, exact=False), _route(cfg, p, exact=True)]


def _route(cfg: Config, p: ProviderConfig, *, exact: bool) -> Route:
    _, host, port, base_path = p.upstream
    default_port = 443 if p.base_url.startswith("https:") else 80
    authority = host if port == default_port else f"{host}:{port}"
    return Route(
        name=p.name if not exact else f"{p.name}-exact",
        match=RouteMatch(path=p.prefix) if exact else RouteMatch(prefix=p.prefix + "/"),
        route=RouteAction(
            cluster=p.cluster_name,
            prefix_rewrite=(base_path or "/") if exact else base_path + "/",
            host_rewrite_literal=authority,
            # 0 disables the route timeout: an SSE answer may stream for many minutes. The
            # idle timeout still ends a stream on which nothing moves.
            timeout=_seconds(cfg.envoy.request_timeout_seconds),
            idle_timeout=_seconds(cfg.envoy.stream_idle_timeout_seconds),
        ),
        request_headers_to_remove=["accept-encoding"],
    )


def _ext_proc_filter(cfg: Config) -> HttpFilter:
    t = cfg.envoy
    proc = ExternalProcessor(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=EXT_PROC_CLUSTER)),
        failure_mode_allow=False,
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingModeHeaderSendMode.SEND,
            response_header_mode=ProcessingModeHeaderSendMode.SEND,
            request_body_mode=ProcessingModeBodySendMode.BUFFERED,
            response_body_mode=ProcessingModeBodySendMode.STREAMED,
            request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
            response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
        ),
        message_timeout=datetime.timedelta(milliseconds=t.message_timeout_ms),
        max_message_timeout=_seconds(t.max_message_timeout_seconds),
        allow_mode_override=True,
        status_on_error=HttpStatus(code=StatusCode.ServiceUnavailable),
        stat_prefix="extproc",
    )
    return HttpFilter(name="envoy.filters.http.ext_proc", typed_config=PbAny.pack(proc))


#: Error types of Envoy's own local replies (413 payload too large, 503 when ext_proc is down...).
_LOCAL_REPLY_TYPES = {
    400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large", 431: "invalid_request_error",
    500: "api_error", 502: "upstream_error", 503: "service_unavailable", 504: "timeout_error",
}


def _local_replies() -> LocalReplyConfig:
    """Envoy's own error replies in the gateway's JSON error shape, so SDKs surface them.

    The ext_proc server's immediate responses are local replies too; they already carry the
    JSON body and set details ``extproc_*``, which the CEL filter leaves alone.
    """
    from envoy_data_plane.envoy.config.accesslog.v3 import (
        AccessLogFilter,
        AndFilter,
        ComparisonFilter,
        ComparisonFilterOp,
        ExtensionFilter,
        StatusCodeFilter,
    )
    from envoy_data_plane.envoy.config.core.v3 import RuntimeUInt32, SubstitutionFormatString
    from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
    from envoy_data_plane.google.protobuf import Struct

    not_ours = AccessLogFilter(extension_filter=ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel",
        typed_config=PbAny.pack(ExpressionFilter(expression='!response.code_details.startsWith("extproc")')),
    ))

    def body(kind: str) -> SubstitutionFormatString:
        return SubstitutionFormatString(
            json_format=Struct.from_dict({"type": "error", "error": {
                "message": "%LOCAL_REPLY_BODY%", "type": kind, "code": "%RESPONSE_CODE_DETAILS%",
                "request_id": "%REQ(X-REQUEST-ID)%"}}),
            content_type="application/json",
        )

    mappers = [
        ResponseMapper(
            filter=AccessLogFilter(and_filter=AndFilter(filters=[
                AccessLogFilter(status_code_filter=StatusCodeFilter(comparison=ComparisonFilter(
                    op=ComparisonFilterOp.EQ, value=RuntimeUInt32(default_value=code, runtime_key=f"extproc.lr.{code}"),
                ))),
                not_ours,
            ])),
            body_format_override=body(kind),
        )
        for code, kind in _LOCAL_REPLY_TYPES.items()
    ]
    mappers.append(ResponseMapper(filter=not_ours, body_format_override=body("api_error")))
    return LocalReplyConfig(mappers=mappers)


def _hcm(cfg: Config, stat_prefix: str, *, ext_proc: bool = True) -> Filter:
    vhost = VirtualHost(name="providers", domains=["*"], routes=[r for p in cfg.providers for r in _routes(cfg, p)])
    access_log = []
    if cfg.envoy.access_log:
        from envoy_data_plane.envoy.config.core.v3 import SubstitutionFormatString
        from envoy_data_plane.google.protobuf import Struct

        fmt = SubstitutionFormatString(json_format=Struct.from_dict(_ACCESS_LOG_FORMAT))
        access_log = [
            AccessLog(name="envoy.access_loggers.stdout", typed_config=PbAny.pack(StdoutAccessLog(log_format=fmt)))
        ]
    hcm = HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(name="providers", virtual_hosts=[vhost]),
        http_filters=[
            *([_ext_proc_filter(cfg)] if ext_proc else []),
            HttpFilter(name="envoy.filters.http.router", typed_config=PbAny.pack(Router())),
        ],
        stream_idle_timeout=_seconds(cfg.envoy.stream_idle_timeout_seconds),
        request_timeout=_seconds(0),
        normalize_path=True,
        merge_slashes=True,
        always_set_request_id_in_response=True,
        local_reply_config=_local_replies(),
        access_log=access_log,
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=PbAny.pack(hcm))


def render_bootstrap(cfg: Config, *, ext_proc: bool = True) -> Bootstrap:
    """``ext_proc=False`` leaves the filter out: only the benchmark's Envoy-alone baseline uses it."""
    listeners = [
        Listener(
            name="http",
            address=_addr(cfg.listener.address, cfg.listener.port),
            per_connection_buffer_limit_bytes=cfg.envoy.max_request_bytes,
            filter_chains=[FilterChain(filters=[_hcm(cfg, "http", ext_proc=ext_proc)])],
        )
    ]
    if cfg.tls is not None:
        tls = DownstreamTlsContext(
            common_tls_context=CommonTlsContext(
                tls_params=TlsParameters(tls_minimum_protocol_version=TlsParametersTlsProtocol.TLSv1_2),
                alpn_protocols=["h2", "http/1.1"],
                tls_certificates=[
                    TlsCertificate(
                        certificate_chain=DataSource(filename=cfg.tls.cert_file),
                        private_key=DataSource(filename=cfg.tls.key_file),
                    )
                ],
            )
        )
        listeners.append(
            Listener(
                name="https",
                address=_addr(cfg.tls.address, cfg.tls.port),
                per_connection_buffer_limit_bytes=cfg.envoy.max_request_bytes,
                filter_chains=[
                    FilterChain(
                        filters=[_hcm(cfg, "https", ext_proc=ext_proc)],
                        transport_socket=TransportSocket(
                            name="envoy.transport_sockets.tls", typed_config=PbAny.pack(tls)
                        ),
                    )
                ],
            )
        )
    clusters = [
        _cluster(
            EXT_PROC_CLUSTER,
            cfg.ext_proc.address if cfg.ext_proc.address not in ("0.0.0.0", "::") else "127.0.0.1",
            cfg.ext_proc.port,
            1.0,
            # With worker processes sharing the port, few streams per connection make Envoy open
            # enough connections for the kernel to spread over the workers (extproc/workers.py).
            # ``workers: 0`` is resolved where the server runs, so only an explicit 1 leaves it out
            # (the rendered file must not depend on the machine that renders it).
            typed_extension_protocol_options=_http_options(
                http2=True, max_streams=STREAMS_PER_CONNECTION if cfg.workers != 1 else None),
        ),
        *(_provider_cluster(cfg, p) for p in cfg.providers),
    ]
    return Bootstrap(
        admin=Admin(address=_addr(cfg.envoy_admin.address, cfg.envoy_admin.port)),
        static_resources=BootstrapStaticResources(listeners=listeners, clusters=clusters),
    )


def render_envoy(cfg: Config, *, ext_proc: bool = True) -> dict[str, Any]:
    """The bootstrap as a plain mapping in Envoy's JSON/YAML form."""
    data: dict[str, Any] = render_bootstrap(cfg, ext_proc=ext_proc).to_dict()
    return data


def dump_yaml(cfg: Config) -> str:
    header = (
        f"# Rendered by `extproc envoy render` from {cfg.source}.\n"
        "# Do not edit: change the extproc configuration and render again.\n"
    )
    return header + yaml.safe_dump(render_envoy(cfg), sort_keys=False, default_flow_style=False)
