from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Provider(_message.Message):
    __slots__ = ("name", "api", "prefix", "base_url", "credential_available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    api: str
    prefix: str
    base_url: str
    credential_available: bool
    def __init__(self, name: _Optional[str] = ..., api: _Optional[str] = ..., prefix: _Optional[str] = ..., base_url: _Optional[str] = ..., credential_available: _Optional[bool] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("version", "config_version", "config_source", "uptime_seconds", "ready", "redis_ok", "inflight_streams", "providers", "issuers")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REDIS_OK_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ISSUERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    config_version: str
    config_source: str
    uptime_seconds: float
    ready: bool
    redis_ok: bool
    inflight_streams: int
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    issuers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., config_version: _Optional[str] = ..., config_source: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., ready: _Optional[bool] = ..., redis_ok: _Optional[bool] = ..., inflight_streams: _Optional[int] = ..., providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., issuers: _Optional[_Iterable[str]] = ...) -> None: ...
