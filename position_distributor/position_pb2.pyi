from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Trade(_message.Message):
    __slots__ = ("symbol", "position")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    position: float
    def __init__(self, symbol: _Optional[str] = ..., position: _Optional[float] = ...) -> None: ...

class SymbolPos(_message.Message):
    __slots__ = ("strategy_name", "symbol", "net_position", "timestamp")
    STRATEGY_NAME_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NET_POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    strategy_name: str
    symbol: str
    net_position: float
    timestamp: int
    def __init__(self, strategy_name: _Optional[str] = ..., symbol: _Optional[str] = ..., net_position: _Optional[float] = ..., timestamp: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("strategy", "protocol_version", "listen_port", "nonce", "relay", "heartbeat_ms", "instance", "features")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_PORT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    protocol_version: int
    listen_port: int
    nonce: bytes
    relay: bool
    heartbeat_ms: int
    instance: bytes
    features: int
    def __init__(self, strategy: _Optional[str] = ..., protocol_version: _Optional[int] = ..., listen_port: _Optional[int] = ..., nonce: _Optional[bytes] = ..., relay: _Optional[bool] = ..., heartbeat_ms: _Optional[int] = ..., instance: _Optional[bytes] = ..., features: _Optional[int] = ...) -> None: ...

class Auth(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: bytes
    def __init__(self, proof: _Optional[bytes] = ...) -> None: ...

class SyncDone(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Digest(_message.Message):
    __slots__ = ("count", "hash")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    count: int
    hash: bytes
    def __init__(self, count: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("count", "hash")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    count: int
    hash: bytes
    def __init__(self, count: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class Repair(_message.Message):
    __slots__ = ("done", "count")
    DONE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    done: bool
    count: int
    def __init__(self, done: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class Bye(_message.Message):
    __slots__ = ("reason", "code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    code: int
    def __init__(self, reason: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("hello", "position", "sync_done", "heartbeat", "auth", "digest", "repair_request", "repair", "bye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SYNC_DONE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPAIR_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    BYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    position: SymbolPos
    sync_done: SyncDone
    heartbeat: Heartbeat
    auth: Auth
    digest: Digest
    repair_request: RepairRequest
    repair: Repair
    bye: Bye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., position: _Optional[_Union[SymbolPos, _Mapping]] = ..., sync_done: _Optional[_Union[SyncDone, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ..., digest: _Optional[_Union[Digest, _Mapping]] = ..., repair_request: _Optional[_Union[RepairRequest, _Mapping]] = ..., repair: _Optional[_Union[Repair, _Mapping]] = ..., bye: _Optional[_Union[Bye, _Mapping]] = ...) -> None: ...
