from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListRecordsRequest(_message.Message):
    __slots__ = ("user", "session", "decision", "provider", "model", "since", "until", "limit", "client_request_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    session: str
    decision: str
    provider: str
    model: str
    since: float
    until: float
    limit: int
    client_request_id: str
    def __init__(self, user: _Optional[str] = ..., session: _Optional[str] = ..., decision: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., limit: _Optional[int] = ..., client_request_id: _Optional[str] = ...) -> None: ...

class RecordSummary(_message.Message):
    __slots__ = ("request_id", "interaction_id", "session_id", "user", "provider", "route", "model", "operation", "action", "status", "received_at_ms", "latency_ms", "total_tokens", "stream", "complete", "forwarded", "client_request_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    interaction_id: str
    session_id: str
    user: str
    provider: str
    route: str
    model: str
    operation: str
    action: str
    status: int
    received_at_ms: int
    latency_ms: int
    total_tokens: int
    stream: bool
    complete: bool
    forwarded: bool
    client_request_id: str
    def __init__(self, request_id: _Optional[str] = ..., interaction_id: _Optional[str] = ..., session_id: _Optional[str] = ..., user: _Optional[str] = ..., provider: _Optional[str] = ..., route: _Optional[str] = ..., model: _Optional[str] = ..., operation: _Optional[str] = ..., action: _Optional[str] = ..., status: _Optional[int] = ..., received_at_ms: _Optional[int] = ..., latency_ms: _Optional[int] = ..., total_tokens: _Optional[int] = ..., stream: _Optional[bool] = ..., complete: _Optional[bool] = ..., forwarded: _Optional[bool] = ..., client_request_id: _Optional[str] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RecordSummary]
    def __init__(self, records: _Optional[_Iterable[_Union[RecordSummary, _Mapping]]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class RecordDetail(_message.Message):
    __slots__ = ("summary", "json")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    summary: RecordSummary
    json: str
    def __init__(self, summary: _Optional[_Union[RecordSummary, _Mapping]] = ..., json: _Optional[str] = ...) -> None: ...

class ExportRecordsRequest(_message.Message):
    __slots__ = ("since", "until")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ...) -> None: ...

class ExportRecordsChunk(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class VerifyRecordsRequest(_message.Message):
    __slots__ = ("from_id", "to_id")
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    from_id: str
    to_id: str
    def __init__(self, from_id: _Optional[str] = ..., to_id: _Optional[str] = ...) -> None: ...

class VerifyRecordsResponse(_message.Message):
    __slots__ = ("ok", "checked", "first_break_id", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BREAK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checked: int
    first_break_id: str
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., checked: _Optional[int] = ..., first_break_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
