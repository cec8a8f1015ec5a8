"""Property-based tests (hypothesis) of the wire contracts and of the model-id subject encoding.

* Every msgspec Struct in ``schemas/`` (found by walking the package, so a new one is covered as soon as it
  exists) survives a msgspec JSON round trip; the tagged ones also decode through their union (``ChatReply``,
  ``WorkerReport``) to the same class. Instances are drawn from the Struct's own type information
  (``msgspec.inspect``), constraints included; ``Raw`` fields hold valid JSON.
* The model-id encoding: every non-empty id round-trips, encodes to one valid subject token and KV key, and
  two different ids never share a token, so no id can reach another model's subject.

Deterministic and bounded: derandomized, no example database, no deadline.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import string
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelbus.schemas as schemas
from modelbus.schemas.chat import ChatReply
from modelbus.schemas.heartbeat import WorkerReport, worker_report_decoder
from modelbus.schemas.subjects import (
    PREFIX,
    cancel_subject,
    chat_subject,
    decode_token,
    encode_token,
    event_subject,
    heartbeat_subject,
)

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=100)
TOKEN = re.compile(r"[A-Za-z0-9_-]+")
INT64 = (-(2**63), 2**63 - 1)


def _wire_structs() -> list[type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    for module_info in pkgutil.iter_modules(schemas.__path__, prefix="modelbus.schemas."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = value
    return [found[k] for k in sorted(found)]


WIRE_STRUCTS = _wire_structs()

# --- strategies from msgspec's type information --------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(*INT64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
raw_json = json_values.map(lambda value: msgspec.Raw(msgspec.json.encode(value)))


def _bounded(low: Any, high: Any, default: tuple[Any, Any]) -> tuple[Any, Any]:
    return (default[0] if low is None else low, default[1] if high is None else high)


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of the type msgspec describes as ``t``, within its constraints."""
    if isinstance(t, mi.StructType):
        fields = {f.name: strategy_for(f.type) for f in t.fields}
        return st.fixed_dictionaries(fields).map(lambda kwargs, cls=t.cls: cls(**kwargs))
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy_for(member) for member in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        return st.integers(*_bounded(low, high, INT64))
    if isinstance(t, mi.FloatType):
        return st.floats(
            min_value=t.ge if t.ge is not None else t.gt,
            max_value=t.le if t.le is not None else t.lt,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.StrType):
        return st.text(min_size=t.min_length or 0, max_size=t.max_length if t.max_length is not None else 30)
    if isinstance(t, mi.BytesType):
        return st.binary(min_size=t.min_length or 0, max_size=64 if t.max_length is None else t.max_length)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.RawType):
        return raw_json
    if isinstance(t, mi.AnyType):
        return json_values
    if isinstance(t, mi.ListType | mi.VarTupleType):
        items = st.lists(
            strategy_for(t.item_type),
            min_size=t.min_length or 0,
            max_size=t.max_length if t.max_length is not None else 4,
        )
        return items if isinstance(t, mi.ListType) else items.map(tuple)
    if isinstance(t, mi.TupleType):  # fixed length: one strategy per position
        return st.tuples(*(strategy_for(item) for item in t.item_types))
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=4)
    raise NotImplementedError(f"no strategy for {t!r}: extend strategy_for")


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    return strategy_for(mi.type_info(cls))


# --- wire Structs ------------------------------------------------------------------------------------------


def test_every_wire_struct_is_found() -> None:
    names = {cls.__name__ for cls in WIRE_STRUCTS}
    assert {
        "ChatRequest",
        "ChatChunk",
        "ChatEnd",
        "ChatResult",
        "Keepalive",
        "ChatFailure",
        "Heartbeat",
        "Goodbye",
        "ModelInfo",
        "NsqlRequest",
        "NsqlReply",
        "NsqlQuery",
        "NsqlReady",
        "ModelView",
        "ModelStatusEvent",
        "ErrorInfo",
        "ChatCompletionRequest",
    } <= names, names


@pytest.mark.parametrize("cls", WIRE_STRUCTS, ids=lambda cls: cls.__name__)
def test_wire_struct_round_trips_through_json(cls: type[msgspec.Struct]) -> None:
    decoder = msgspec.json.Decoder(cls)

    @SETTINGS
    @given(struct_strategy(cls))
    def round_trip(value: msgspec.Struct) -> None:
        data = msgspec.json.encode(value)
        assert decoder.decode(data) == value
        assert msgspec.json.encode(decoder.decode(data)) == data

    round_trip()


_chat_reply_decoder = msgspec.json.Decoder(ChatReply)
_worker_report_decoder = worker_report_decoder()


@SETTINGS
@given(st.one_of([struct_strategy(cls) for cls in ChatReply.__args__]))
def test_chat_replies_decode_through_their_union(reply: msgspec.Struct) -> None:
    decoded = _chat_reply_decoder.decode(msgspec.json.encode(reply))
    assert type(decoded) is type(reply)
    assert decoded == reply


@SETTINGS
@given(st.one_of([struct_strategy(cls) for cls in WorkerReport.__args__]))
def test_worker_reports_decode_through_their_union(report: msgspec.Struct) -> None:
    decoded = _worker_report_decoder.decode(msgspec.json.encode(report))
    assert type(decoded) is type(report)
    assert decoded == report


# --- the model-id subject encoding ---------------------------------------------------------------------

# ids from any Unicode text, and from an alphabet of the characters that matter to subjects and to the
# encoding itself (separators, wildcards, whitespace, the escape character, hex digits, non-ASCII)
_tricky = st.text(alphabet=string.ascii_letters[:6] + "0129._-*> \t\n/:%~é€😀\x00", min_size=1, max_size=20)
ids = st.one_of(st.text(min_size=1), _tricky)


@st.composite
def id_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two ids, the second often a near miss of the first: its encoding, a separator swap, an edit."""
    a = draw(ids)
    b = draw(
        st.one_of(
            ids,
            st.just(encode_token(a)),
            st.just(a.replace(".", "_2E")),
            st.just(a.replace(".", "-").replace("_", ".")),
            st.just(a + "_"),
            st.just(a[:-1]) if len(a) > 1 else ids,
            st.just(a.upper()),
            st.just(a.lower()),
        )
    )
    return a, b


@SETTINGS
@given(ids)
def test_every_id_round_trips_and_is_one_valid_token(model_id: str) -> None:
    token = encode_token(model_id)
    assert TOKEN.fullmatch(token), token
    assert decode_token(token) == model_id


@settings(derandomize=True, deadline=None, database=None, max_examples=400)
@given(id_pairs())
def test_different_ids_never_share_a_token_or_a_subject(pair: tuple[str, str]) -> None:
    a, b = pair
    if a == b:
        assert chat_subject(a) == chat_subject(b)
        return
    assert encode_token(a) != encode_token(b)
    assert chat_subject(a) != chat_subject(b)
    assert event_subject(a) != event_subject(b)
    assert heartbeat_subject(a, "w") != heartbeat_subject(b, "w")


@SETTINGS
@given(ids, ids)
def test_subjects_have_a_fixed_shape_with_safe_tokens(model_id: str, worker_id: str) -> None:
    prefix = PREFIX.split(".")
    for subject, kind in (
        (chat_subject(model_id), ["chat"]),
        (event_subject(model_id), ["events", "model"]),
        (cancel_subject(model_id), ["cancel"]),
        (heartbeat_subject(model_id, worker_id), ["heartbeat"]),
    ):
        tokens = subject.split(".")
        expected_len = len(prefix) + len(kind) + (2 if kind == ["heartbeat"] else 1)
        assert len(tokens) == expected_len, subject
        assert tokens[: len(prefix) + len(kind)] == prefix + kind
        for token in tokens:
            assert token, subject
            assert not any(c in token for c in ".*>") and not any(c.isspace() for c in token), subject
    assert heartbeat_subject(model_id, worker_id).split(".")[-2:] == [
        encode_token(model_id),
        encode_token(worker_id),
    ]


def test_the_empty_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_token("")


@SETTINGS
@given(st.one_of(st.text(), st.text(alphabet="_0123456789ABCDEFabcdef-.", max_size=12)))
def test_decoding_any_string_either_fails_cleanly_or_gives_an_id(token: str) -> None:
    """What a KV key or subject token written by something else decodes to: an id, or a ValueError."""
    try:
        model_id = decode_token(token)
    except ValueError:
        return
    assert model_id
    assert decode_token(encode_token(model_id)) == model_id
