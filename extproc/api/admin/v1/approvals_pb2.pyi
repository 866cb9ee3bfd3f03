from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Principal(_message.Message):
    __slots__ = ("user", "issuer", "groups", "workload")
    USER_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    user: str
    issuer: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    workload: str
    def __init__(self, user: _Optional[str] = ..., issuer: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., workload: _Optional[str] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("user", "issuer", "provider", "route", "content_digest", "policy_version", "rule_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    issuer: str
    provider: str
    route: str
    content_digest: str
    policy_version: str
    rule_id: str
    def __init__(self, user: _Optional[str] = ..., issuer: _Optional[str] = ..., provider: _Optional[str] = ..., route: _Optional[str] = ..., content_digest: _Optional[str] = ..., policy_version: _Optional[str] = ..., rule_id: _Optional[str] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("approver", "verdict", "reason", "at")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    approver: Principal
    verdict: str
    reason: str
    at: float
    def __init__(self, approver: _Optional[_Union[Principal, _Mapping]] = ..., verdict: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "binding", "requester", "created_at", "expires_at", "state", "decisions", "quorum", "approvals", "grant", "decided_at", "grant_expires_at", "uses", "approver_groups", "approver_users")
    ID_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    GRANT_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    APPROVER_GROUPS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_USERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    binding: Binding
    requester: Principal
    created_at: float
    expires_at: float
    state: str
    decisions: _containers.RepeatedCompositeFieldContainer[Vote]
    quorum: int
    approvals: int
    grant: str
    decided_at: float
    grant_expires_at: float
    uses: int
    approver_groups: _containers.RepeatedScalarFieldContainer[str]
    approver_users: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., binding: _Optional[_Union[Binding, _Mapping]] = ..., requester: _Optional[_Union[Principal, _Mapping]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., state: _Optional[str] = ..., decisions: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., quorum: _Optional[int] = ..., approvals: _Optional[int] = ..., grant: _Optional[str] = ..., decided_at: _Optional[float] = ..., grant_expires_at: _Optional[float] = ..., uses: _Optional[int] = ..., approver_groups: _Optional[_Iterable[str]] = ..., approver_users: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPendingRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("include_pending",)
    INCLUDE_PENDING_FIELD_NUMBER: _ClassVar[int]
    include_pending: bool
    def __init__(self, include_pending: _Optional[bool] = ...) -> None: ...

class ApprovalEvent(_message.Message):
    __slots__ = ("event", "approval")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    event: str
    approval: Approval
    def __init__(self, event: _Optional[str] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...
