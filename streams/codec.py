"""Compact, fast encoding of :class:`CustomerState` for the changelog-backed table.

Every scored event re-writes its customer's whole state to the changelog, and a
rebalance or restart reads every state back, so the record's size is the
changelog's (and the table's memory's) size per customer and its decode is on
the worker's hot path.

Format 1 is one version byte followed by a MessagePack array (msgspec): each
state class is an array of its field values in :data:`LAYOUTS` order, with
no field names; dicts stay MessagePack maps (int keys are allowed there, and a
map costs no more than a flat key/value array); ``recent_ids`` (random 64-bit
hashes, which MessagePack would spend 9 bytes each on) are packed little-endian
8 bytes each into one ``bin``. The state classes are ``array_like`` msgspec
Structs (scoring/state.py), so msgspec writes and reads that format in C, the
ids through its hooks.

Schema evolution: a layout is append-only. An array shorter than the current
layout decodes with the missing trailing fields at their defaults, so a field
added at the end of a state class needs no migration (tests/unit/test_codec.py
freezes the layouts and says what to do when they change). An array longer than
the layout (a record written by a newer version, read after a rollback) is cut
to the known fields rather than refused: the rolled-back worker keeps running,
and only the newer fields' values are lost for the customers it re-writes.

Fields appended since format 1 began (each decodes as its default from older
records): ``pending_vip_changes`` and ``pending_alerts``, the transactional
outbox (exact JSON bytes, MessagePack ``bin``; streams/checkpoint.py). They
are empty except between the checkpoint's first changelog write and its
second, so they add 4 bytes to a record (two empty arrays, a longer array
header). A worker rolled back to a version before them cuts them off: a state
recovered with unpublished entries then loses those records (they are neither
published nor decided again: the replayed events are duplicates for the state).
``episodes`` (scoring.episodes, issue 19): absent (None, trimmed like
``clv_cents``) until the customer's first alert or retention action; then an
array of its episodes, pending actions, folded totals and two counters.

Records written before format 1 are orjson objects (they start with ``{``);
existing changelogs hold them, so they still decode.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

import msgspec
import orjson

from scoring.churn import ChurnState
from scoring.clv import PurchaseDays
from scoring.customer import CustomerState, no_id_hashes
from scoring.episodes import Episode, EpisodeState, PendingAction
from scoring.orders import OrderState
from scoring.tickets import Folded, ServiceState
from scoring.voice import VoiceState

#: first byte of a format-1 record (an orjson record starts with ``{``, 0x7b)
FORMAT_VERSION = 1
_V1 = bytes([FORMAT_VERSION])
_LEGACY_FIRST = ord("{")

#: The wire order of each encoded class: its field order, append-only, frozen by tests/unit/test_codec.py.
LAYOUTS: dict[type, tuple[str, ...]] = {
    cls: cls.__struct_fields__
    for cls in (
        CustomerState,
        OrderState,
        VoiceState,
        ServiceState,
        Folded,
        PurchaseDays,
        ChurnState,
        EpisodeState,
        Episode,
        PendingAction,
    )
}

#: the ids' bytes are little-endian whatever the machine's order
_SWAP = sys.byteorder != "little"


def _enc_hook(obj: Any) -> Any:
    if type(obj) is array:
        if _SWAP:
            obj = obj[:]  # (a copy: the state's own stays in the machine's order)
            obj.byteswap()
        return obj.tobytes()
    raise NotImplementedError(f"no state encoding for {type(obj)}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is array and isinstance(obj, bytes):
        ids = no_id_hashes()
        ids.frombytes(obj)  # (a length not a multiple of 8 raises: not a state written here)
        if _SWAP:
            ids.byteswap()
        return ids
    raise NotImplementedError(f"no state decoding of {type(obj)} as {kind}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(CustomerState, dec_hook=_dec_hook)

#: the last fields, None unless their feature is in use, left out while None (an array shorter than the layout
#: decodes with its defaults): ``clv_cents`` (only PULSE_VIP_VALUE=clv sets it) and ``episodes`` (only a customer
#: ever alerted or acted on has them), so they cost nothing, and change no record, where the feature is off
_OPTIONAL = ("clv_cents", "episodes")
#: the record's array header (after the version byte): 0xdc and a big-endian 16-bit count, as for any array of
#: 16 to 65,535 items; its count byte is at this index
_COUNT_AT = 3
if LAYOUTS[CustomerState][-2:] != _OPTIONAL or not 16 <= len(LAYOUTS[CustomerState]) - 2 < 256 - 2:
    raise RuntimeError("encode_state's trimming needs the optional fields last and a 16-bit array header")


def encode_state(state: CustomerState) -> bytes:
    """Positional MessagePack behind a version byte: no field names, so about a quarter of the orjson record."""
    if type(state.recent_ids) is not array:
        # (MessagePack would write a list as an array, which no reader takes for the ids' bin)
        raise TypeError(f"CustomerState.recent_ids must be an array('q'), not {type(state.recent_ids).__name__}")
    if state.episodes is not None:
        return _V1 + _encoder.encode(state)
    buffer = bytearray(_V1)
    _encoder.encode_into(state, buffer, 1)
    cut = 2 if state.clv_cents is None else 1
    del buffer[-cut:]  # (each a MessagePack nil, one byte)
    buffer[_COUNT_AT] -= cut
    return bytes(buffer)


def decode_state(raw: bytes | None) -> CustomerState:
    """Format 1, or an orjson record (existing changelogs hold them); no record at all is a new customer."""
    if not raw:
        return CustomerState()
    first = raw[0]
    if first == FORMAT_VERSION:
        return _decoder.decode(memoryview(raw)[1:])
    if first == _LEGACY_FIRST:
        return _decode_orjson(raw)
    raise ValueError(f"unknown customer state format {first:#04x} (a newer writer, or not a state record)")


#: the CustomerState fields the orjson format knew (format 1 appended the outbox after them)
_ORJSON_FIELDS = LAYOUTS[CustomerState][: LAYOUTS[CustomerState].index("activity") + 1]


def _plain(value: Any) -> Any:
    """A state part as the orjson records held it: classes as objects of their fields, the ids as a list."""
    if isinstance(value, msgspec.Struct):
        return {name: _plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, array):
        return list(value)
    return value


def encode_state_orjson(state: CustomerState) -> bytes:
    """The record as written before format 1: for tests of the old records' decoding only."""
    return orjson.dumps({name: _plain(getattr(state, name)) for name in _ORJSON_FIELDS}, option=orjson.OPT_NON_STR_KEYS)


def _decode_orjson(raw: bytes) -> CustomerState:
    data = orjson.loads(raw)
    orders = data["orders"]
    orders["revenue_buckets"] = {int(k): v for k, v in orders["revenue_buckets"].items()}
    data["orders"] = OrderState(**orders)
    voice = data["voice"]
    voice["complaint_days"] = {int(k): v for k, v in voice["complaint_days"].items()}
    # states written before the population indicators existed start their day rows empty
    voice["answer_days"] = {int(k): v for k, v in voice.get("answer_days", {}).items()}
    data["voice"] = VoiceState(**voice)
    service = data["service"]
    data["service"] = ServiceState(
        tickets=service["tickets"],
        folded=Folded(**service["folded"]),
        ticket_days={int(k): v for k, v in service.get("ticket_days", {}).items()},
        ticket_days_newest=service.get("ticket_days_newest"),
    )
    # states written before CLV and churn existed start them empty
    data["purchases"] = PurchaseDays(**data.get("purchases", {}))
    data["churn"] = ChurnState(**data.get("churn", {}))
    ids = no_id_hashes()
    ids.extend(data.get("recent_ids", ()))
    data["recent_ids"] = ids
    return CustomerState(**data)
