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
* paths are normalised before routing (dot segments, ``//``, ``\\`` and percent-encoded
  unreserved characters), and a path with an escaped slash (``%2F``, ``%5C``) is refused with
  400: decoding it (``UNESCAPE_AND_FORWARD``) would change what a legitimate ``%2F`` means to
  the upstream, and redirecting (``UNESCAPE_AND_REDIRECT``) makes SDKs re-send bodies to a
  path they did not choose; no API behind the gateway needs one. What normalisation leaves
  ambiguous (``;`` parameters, ``%252F``...) the ext_proc server refuses
  (:mod:`extproc.datapath.paths`);
* the ext_proc filter is disabled in the connection manager and enabled on the virtual host,
  so it only runs on requests that reached routing. Envoy's codec errors (HTTP/1.0, header
  limits, smuggling attempts, NUL bytes) are answered before any route exists; with the
  filter in their chain Envoy would open an ext_proc stream for the local reply and close
  the connection before it answered, leaving the caller an empty reply
  (envoyproxy/envoy#29440). They get the JSON error shape from ``local_reply_config``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapStaticResources,
    LayeredRuntime,
    RuntimeLayer,
)
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Pipe,
    SocketAddress,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    FilterConfig,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ExtProcOverrides,
    ExtProcPerRoute,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerPathWithEscapedSlashesAction,
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
from envoy_data_plane.google.protobuf import Struct

from extproc.config.model import Config, ListenerConfig, ProviderConfig, UnixListener
from extproc.errors import ERROR_TYPES
from extproc.workers import STREAMS_PER_CONNECTION, worker_socket_paths

__all__ = ["EXT_PROC_CLUSTER", "LOCAL_REPLIES", "LocalReply", "dump_yaml", "render_bootstrap", "render_envoy"]

EXT_PROC_CLUSTER = "extproc"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#: JSON access log: no headers, no query strings, nothing that could carry a credential. Not the
#: path either: it is caller-controlled and Envoy cannot mask it (the masked path is in the
#: interaction log line); the route names the provider.
_ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    # The answer's id: the gateway's (ext_proc's) whenever ext_proc saw the request, else
    # the one Envoy generated; never the client's.
    "request_id": "%RESP(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "route": "%ROUTE_NAME%",
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


def _listen_addr(lc: ListenerConfig) -> Address:
    """A TCP address, or a ``pipe`` (unix socket) for a ``unix:/path`` listener. Envoy creates
    the socket file with ``socket_mode``."""
    path = lc.unix_path
    if path is not None:
        return Address(pipe=Pipe(path=path, mode=lc.socket_mode if isinstance(lc, UnixListener) else 0o660))
    return _addr(lc.address, lc.port)


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


def _cluster(name: str, host: str, port: int, connect_timeout: float, *, pipe: str | None = None,
             pipes: list[str] | None = None, **kw: Any) -> Cluster:
    """``pipe``: the upstream is the unix socket at that path (``host``/``port`` unused);
    ``pipes``: one endpoint per unix socket (an empty list means TCP)."""
    paths = pipes if pipes else [pipe] if pipe is not None else []
    addresses = [Address(pipe=Pipe(path=p)) for p in paths] or [_addr(host, port)]
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if paths or _is_ip(host) else ClusterDiscoveryType.LOGICAL_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(connect_timeout),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=a)) for a in addresses])],
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
    # Disabled here, enabled on the virtual host: see the module docstring (codec errors).
    return HttpFilter(name=EXT_PROC_FILTER, typed_config=PbAny.pack(proc), disabled=True)


def _no_route() -> Route:
    """Every path no provider claims. The ext_proc server answers these first (``no_route``,
    or ``invalid_path``); this direct answer only backs it up."""
    # local_reply_config turns it into the JSON error shape, like every answer Envoy gives.
    return Route(name="no-route", match=RouteMatch(prefix="/"),
                 direct_response=DirectResponseAction(
                     status=404, body=DataSource(inline_string="no provider is configured for this path")))


@dataclass(frozen=True, slots=True)
class LocalReply:
    """One kind of answer Envoy gives by itself, with the stable code the caller sees."""

    #: CEL over ``response.code`` and ``response.code_details``: when this mapping applies.
    when: str
    status: int
    code: str
    message: str


#: Envoy's own answers, first match wins. Envoy's response-code details are diagnostics that
#: change between releases and carry internals (``ext_proc_error_gRPC_error_14{...}``); the
#: caller gets a documented code and a human message instead (README, "Errors"), and the
#: details stay in the access log.
LOCAL_REPLIES: tuple[LocalReply, ...] = (
    LocalReply('response.code_details == "low_version"', 426, "http_version_unsupported",
               "HTTP/1.0 is not supported; use HTTP/1.1 or HTTP/2"),
    LocalReply("response.code == 431", 431, "headers_too_large",
               "the request headers are too large or too many"),
    LocalReply('response.code_details.startsWith("ext_proc_error") && response.code == 504', 504,
               "extproc_timeout", "the policy service did not answer in time; nothing was sent"),
    LocalReply('response.code_details.startsWith("ext_proc_error")', 503, "extproc_unavailable",
               "the policy service is unavailable; nothing was sent"),
    LocalReply('response.code_details in ["path_normalization_failed", "absolute_path_rejected", '
               '"http1.invalid_url"]', 400, "invalid_path",
               "the path is not a plain absolute path (escaped slashes, '*' and the like are refused)"),
    LocalReply("response.code == 413", 413, "request_too_large", "the request body is over the gateway's limit"),
    LocalReply('response.code_details.startsWith("http1.") || response.code_details.startsWith("http2.") || '
               'response.code_details.startsWith("codec_error")', 400, "malformed_request",
               "the request is not valid HTTP (bad framing, characters or headers)"),
    LocalReply("response.code == 404", 404, "no_route", "no provider is configured for this path"),
    LocalReply("response.code == 400", 400, "bad_request", "the request cannot be processed"),
    LocalReply("response.code == 504", 504, "upstream_timeout", "the provider did not answer in time"),
    LocalReply("response.code == 502 || response.code == 503", 503, "upstream_unavailable",
               "the provider cannot be reached right now"),
    LocalReply("response.code >= 400 && response.code < 500", 400, "bad_request", "the request cannot be processed"),
    LocalReply("true", 500, "gateway_error", "the gateway could not handle this request"),
)


def _local_replies() -> LocalReplyConfig:
    """Envoy's own error replies in the gateway's JSON error shape, with stable codes.

    The ext_proc server's immediate responses are local replies too; they already carry the
    JSON body and set details ``extproc_*``, which every mapping leaves alone.
    """
    from envoy_data_plane.envoy.config.accesslog.v3 import AccessLogFilter, ExtensionFilter
    from envoy_data_plane.envoy.config.core.v3 import (
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
        SubstitutionFormatString,
    )
    from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter

    # Envoy's own replies (ext_proc down, body too large) carry the request's id, which is
    # never the client's (see _early_request_id) and is the gateway's once ext_proc set it.
    request_id = [HeaderValueOption(
        header=HeaderValue(key="x-request-id", value="%REQ(X-REQUEST-ID)%"),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )]

    def mapper(lr: LocalReply) -> ResponseMapper:
        return ResponseMapper(
            headers_to_add=request_id,
            filter=AccessLogFilter(extension_filter=ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel",
                typed_config=PbAny.pack(ExpressionFilter(
                    expression=f'!response.code_details.startsWith("extproc") && ({lr.when})')),
            )),
            status_code=lr.status,
            # json_format escapes the request id; it is null when there is none (codec errors).
            body_format_override=SubstitutionFormatString(
                json_format=Struct.from_dict({"type": "error", "error": {
                    "message": lr.message, "type": ERROR_TYPES.get(lr.status, "api_error"), "code": lr.code,
                    "request_id": "%REQ(X-REQUEST-ID)%"}}),
                content_type="application/json",
            ),
        )

    return LocalReplyConfig(mappers=[mapper(lr) for lr in LOCAL_REPLIES])


#: Where the client's x-request-id goes (see ``_early_request_id``); the machine reads it there.
CLIENT_REQUEST_ID_HEADER = "x-extproc-client-request-id"


def _early_request_id() -> TypedExtensionConfig:
    """Before Envoy looks at ``x-request-id`` at all, move the client's value aside.

    Envoy keeps a client's ``x-request-id`` for "internal" peers (loopback included) and then
    logs and answers with it, so two callers could share one id. Here it becomes
    ``x-extproc-client-request-id`` (a correlation attribute, validated by ext_proc), and
    Envoy generates its own id, which ext_proc replaces with the gateway's record id.
    """
    from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutation as RuleMutation
    from envoy_data_plane.envoy.config.core.v3 import (
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
    )
    from envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
        HeaderMutation as EarlyHeaderMutation,
    )

    move = EarlyHeaderMutation(mutations=[
        RuleMutation(remove=CLIENT_REQUEST_ID_HEADER),  # never the client's own copy
        # Kept when empty (no client id): ext_proc then knows the x-request-id it sees is
        # Envoy's own, not a caller's passed on by another proxy.
        RuleMutation(append=HeaderValueOption(
            header=HeaderValue(key=CLIENT_REQUEST_ID_HEADER, value="%REQ(x-request-id)%"),
            append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            keep_empty_value=True,
        )),
        RuleMutation(remove="x-request-id"),
    ])
    return TypedExtensionConfig(name="envoy.http.early_header_mutation.header_mutation",
                                typed_config=PbAny.pack(move))


def _hcm(cfg: Config, stat_prefix: str, *, ext_proc: bool = True) -> Filter:
    enable_ext_proc = {
        EXT_PROC_FILTER: PbAny.pack(FilterConfig(config=PbAny.pack(ExtProcPerRoute(overrides=ExtProcOverrides()))))
    } if ext_proc else {}
    vhost = VirtualHost(
        name="providers", domains=["*"],
        routes=[*(r for p in cfg.providers for r in _routes(cfg, p)), _no_route()],
        typed_per_filter_config=enable_ext_proc,
    )
    access_log = []
    if cfg.envoy.access_log:
        from envoy_data_plane.envoy.config.core.v3 import SubstitutionFormatString

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
        path_with_escaped_slashes_action=HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST,
        # Off: Envoy would overwrite the gateway's id in ext_proc's own answers with the one it
        # generated. ext_proc sets x-request-id on every answer; Envoy's own replies get it
        # from the local-reply mappers.
        always_set_request_id_in_response=False,
        early_header_mutation_extensions=[_early_request_id()],
        local_reply_config=_local_replies(),
        access_log=access_log,
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=PbAny.pack(hcm))


def render_bootstrap(cfg: Config, *, ext_proc: bool = True, dev_tls: bool = True) -> Bootstrap:
    """``ext_proc=False`` leaves the filter out: only the benchmark's Envoy-alone baseline uses it.

    ``dev_tls=False`` leaves out a TLS listener whose certificate is generated for development
    (``.run/tls/``, created by ``extproc dev``): a committed or deployed config must load where
    that certificate does not exist.
    """
    listeners = [
        Listener(
            name="http",
            address=_addr(cfg.listener.address, cfg.listener.port),
            per_connection_buffer_limit_bytes=cfg.envoy.max_request_bytes,
            filter_chains=[FilterChain(filters=[_hcm(cfg, "http", ext_proc=ext_proc)])],
        )
    ]
    if cfg.tls is not None and (dev_tls or not cfg.tls.generated):
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
            pipes=worker_socket_paths(cfg.ext_proc.unix_path, cfg.workers),
            # TCP: the workers share the port (SO_REUSEPORT); few streams per connection make Envoy
            # open enough connections for the kernel to spread over them (extproc/workers.py).
            # ``workers: 0`` is resolved where the server runs, so only an explicit 1 leaves the
            # cap out (the rendered file must not depend on the machine that renders it). A unix
            # socket has one endpoint per worker instead, and Envoy balances over them.
            typed_extension_protocol_options=_http_options(
                http2=True,
                max_streams=STREAMS_PER_CONNECTION if cfg.workers != 1 and cfg.ext_proc.unix_path is None else None),
        ),
        *(_provider_cluster(cfg, p) for p in cfg.providers),
    ]
    if cfg.envoy_probe is not None and cfg.envoy_admin.unix_path is not None:
        listeners.append(_probe_listener(cfg.envoy_probe))
        clusters.append(_cluster(ENVOY_ADMIN_CLUSTER, "", 0, 1.0, pipe=cfg.envoy_admin.unix_path,
                                 typed_extension_protocol_options=_http_options(http2=False)))
    return Bootstrap(
        admin=Admin(address=_listen_addr(cfg.envoy_admin)),
        static_resources=BootstrapStaticResources(listeners=listeners, clusters=clusters),
        layered_runtime=LayeredRuntime(layers=[RuntimeLayer(name="extproc", static_layer=Struct.from_dict(RUNTIME))]),
    )


#: Envoy runtime settings of every rendered bootstrap.
#:
#: ``ext_proc_graceful_grpc_close``: at the end of a request Envoy half-closes the ext_proc
#: stream and waits (up to 1 s) for the server's status, instead of resetting it. A reset
#: cancels the stream under grpc.aio while it awaits the next message, and grpcio (1.85)
#: leaks the C array of each batch that is cancelled or fails that way (grpc/grpc#43360): the
#: ext_proc process grew ~200 bytes per request; with the graceful close ~70
#: (docs/performance.md, "Memory"). It also lets the stream end with a status, not a reset.
RUNTIME: dict[str, Any] = {"envoy.reloadable_features.ext_proc_graceful_grpc_close": True}


ENVOY_ADMIN_CLUSTER = "envoy_admin"
#: What the probe listener passes to Envoy's admin interface: read-only, nothing else.
PROBE_PATHS = ("/ready", "/stats/prometheus")


def _probe_listener(lc: ListenerConfig) -> Listener:
    """Readiness and Prometheus stats for kubelet and scrapers, without the admin interface.

    Envoy's admin interface can stop (``/quitquitquit``), drain and reconfigure Envoy, so it is
    on a unix socket only the sidecars see. This listener forwards exactly ``GET /ready`` and
    ``GET /stats/prometheus`` to it and answers everything else 404 itself.
    """
    from envoy_data_plane.envoy.config.route.v3 import DirectResponseAction, HeaderMatcher

    get = [HeaderMatcher(name=":method", string_match=StringMatcher(exact="GET"))]
    routes = [
        Route(name=f"probe{path.replace('/', '-')}", match=RouteMatch(path=path, headers=get),
              route=RouteAction(cluster=ENVOY_ADMIN_CLUSTER, timeout=_seconds(5)))
        for path in PROBE_PATHS
    ]
    routes.append(Route(name="probe-other", match=RouteMatch(prefix="/"),
                        direct_response=DirectResponseAction(status=404)))
    hcm = HttpConnectionManager(
        stat_prefix="probe",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(name="probe", virtual_hosts=[
            VirtualHost(name="probe", domains=["*"], routes=routes)]),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=PbAny.pack(Router()))],
        normalize_path=True,
        merge_slashes=True,
    )
    return Listener(
        name="probe",
        address=_addr(lc.address, lc.port),
        filter_chains=[FilterChain(filters=[
            Filter(name="envoy.filters.network.http_connection_manager", typed_config=PbAny.pack(hcm))])],
    )


def render_envoy(cfg: Config, *, ext_proc: bool = True, dev_tls: bool = True) -> dict[str, Any]:
    """The bootstrap as a plain mapping in Envoy's JSON/YAML form."""
    data: dict[str, Any] = render_bootstrap(cfg, ext_proc=ext_proc, dev_tls=dev_tls).to_dict()
    return data


def dump_yaml(cfg: Config, *, dev_tls: bool = True) -> str:
    header = (
        f"# Rendered by `extproc envoy render` from {cfg.source}.\n"
        "# Do not edit: change the extproc configuration and render again.\n"
    )
    if not dev_tls and cfg.tls is not None and cfg.tls.generated:
        header += ("# The TLS listener (a generated development certificate) is left out; `extproc dev`\n"
                   "# renders it into .run/envoy.yaml with the certificate it creates.\n")
    return header + yaml.safe_dump(render_envoy(cfg, dev_tls=dev_tls), sort_keys=False, default_flow_style=False)
