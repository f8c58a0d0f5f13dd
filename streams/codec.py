"""Compact, fast encoding of :class:`CustomerState` for the changelog-backed table.

Every scored event re-writes its customer's whole state to the changelog, and a
rebalance or restart reads every state back, so the record's size is the
changelog's (and the table's memory's) size per customer and its decode is on
the worker's hot path.

Format 1 is one version byte followed by a MessagePack array (msgspec): each
state dataclass is an array of its field values in :data:`LAYOUTS` order, with
no field names; dicts stay MessagePack maps (int keys are allowed there, and a
map costs no more than a flat key/value array); ``recent_ids`` (random 64-bit
hashes, which MessagePack would spend 9 bytes each on) are packed little-endian
8 bytes each into one ``bin``.

Schema evolution: a layout is append-only. An array shorter than the current
layout decodes with the missing trailing fields at their defaults, so a field
added at the end of a dataclass needs no migration (tests/unit/test_codec.py
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

import dataclasses
import struct
from collections.abc import Callable
from operator import attrgetter
from typing import Any, cast

import msgspec
import orjson

from scoring.churn import ChurnState
from scoring.clv import PurchaseDays
from scoring.customer import CustomerState
from scoring.episodes import Episode, EpisodeState, PendingAction
from scoring.orders import OrderState
from scoring.tickets import Folded, ServiceState
from scoring.voice import VoiceState

#: first byte of a format-1 record (an orjson record starts with ``{``, 0x7b)
FORMAT_VERSION = 1
_V1 = bytes([FORMAT_VERSION])
_LEGACY_FIRST = ord("{")

#: The wire order of each encoded class: its dataclass field order, append-only, frozen by tests/unit/test_codec.py.
LAYOUTS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls))
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

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()

_IDS = [struct.Struct(f"<{n}q") for n in range(65)]


def _pack_ids(ids: list[int]) -> bytes:
    n = len(ids)
    return _IDS[n].pack(*ids) if n < len(_IDS) else struct.pack(f"<{n}q", *ids)


def _unpack_ids(raw: bytes) -> list[int]:
    n = len(raw) >> 3
    return list(_IDS[n].unpack(raw) if n < len(_IDS) else struct.unpack(f"<{n}q", raw))


class _Positional:
    """One dataclass as an array in its :data:`LAYOUTS` order; ``fields`` converts the named fields both ways.

    A class with nothing to convert encodes with its ``attrgetter`` alone (one C call, no Python frame).
    """

    __slots__ = ("cls", "size", "encode", "patches", "optional")

    def __init__(
        self,
        cls: type,
        fields: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]],
        optional: int = 0,
    ) -> None:
        """``optional``: that many last fields (default None) are left out while None, so a field added for an
        opt-in feature costs nothing, and changes no record, where the feature is off."""
        layout = LAYOUTS[cls]
        self.cls = cls
        self.size = len(layout)
        self.optional = optional
        self.patches = tuple((layout.index(name), enc, dec) for name, (enc, dec) in fields.items())
        get = attrgetter(*layout) if len(layout) > 1 else (lambda o, name=layout[0]: (getattr(o, name),))
        self.encode: Callable[[Any], Any] = self._patched(get) if self.patches or optional else get

    def _patched(self, get: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], list[Any]]:
        patches = tuple((i, enc) for i, enc, _ in self.patches)
        keep = self.size - self.optional

        def encode(obj: Any) -> list[Any]:
            values = list(get(obj))
            for i, enc in patches:
                values[i] = enc(values[i])
            while len(values) > keep and values[-1] is None:
                del values[-1]
            return values

        return encode

    def decode(self, values: list[Any]) -> Any:
        n = len(values)
        for i, _, dec in self.patches:
            if i < n:
                values[i] = dec(values[i])
        if n > self.size:
            del values[self.size :]
        return self.cls(*values)

    def compiled_decode(self) -> Callable[[list[Any]], Any]:
        """:meth:`decode` as one generated function: the same steps, with each nested class that has nothing to
        convert built in line (``cls(*v)``, cut to its layout when longer) instead of through its own
        ``decode`` call. Why: a state decode built about ten objects through ten such calls, and it ran for
        every customer a batch loads (a tenth of the processor's instructions, issue 18)."""
        namespace: dict[str, Any] = {"_cls": self.cls}
        body = ["def decode(v):", "    n = len(v)"]
        for i, _, dec in self.patches:
            nested = getattr(dec, "__self__", None)
            if (
                isinstance(nested, _Positional)
                and not nested.patches
                and getattr(dec, "__func__", None) is _Positional.decode
            ):
                namespace[f"_c{i}"] = nested.cls
                size = nested.size
                body.append(f"    if n > {i}:")
                body.append(f"        x = v[{i}]")
                body.append(f"        v[{i}] = _c{i}(*x) if len(x) <= {size} else _c{i}(*x[:{size}])")
            else:
                if isinstance(nested, _Positional) and getattr(dec, "__func__", None) is _Positional.decode:
                    dec = nested.compiled_decode()
                namespace[f"_d{i}"] = dec
                body.append(f"    if n > {i}:")
                body.append(f"        v[{i}] = _d{i}(v[{i}])")
        body.append(f"    if n > {self.size}:")
        body.append(f"        del v[{self.size}:]")
        body.append("    return _cls(*v)")
        exec("\n".join(body), namespace)  # noqa: S102 - generated from the layout alone, as dataclasses does
        return cast(Callable[[list[Any]], Any], namespace["decode"])

    def compiled_encode(self) -> Callable[[Any], Any]:
        """:meth:`encode` as one generated function: the same array, with each nested class that has fields to
        convert built in line (a tuple of its attributes) instead of through its own ``encode`` closure, which
        copied the attrgetter's tuple to a list and patched it in a loop. Why: the state is encoded for every
        customer a batch writes (issue 18). A nested class without conversions keeps its ``attrgetter`` (one C
        call); msgspec writes a tuple and a list as the same array."""
        namespace: dict[str, Any] = {}
        body = ["def encode(o):"]
        items = self._compiled_items("o", body, namespace)
        body.append(f"    v = [{', '.join(items)}]")
        keep = self.size - self.optional
        indent = "    "
        for _ in range(self.size - keep):
            body.append(f"{indent}if v[-1] is None:")
            indent += "    "
            body.append(f"{indent}del v[-1]")
        body.append("    return v")
        exec("\n".join(body), namespace)  # noqa: S102 - generated from the layout alone, as dataclasses does
        return cast(Callable[[Any], Any], namespace["encode"])

    def _compiled_items(self, var: str, body: list[str], namespace: dict[str, Any]) -> list[str]:
        """The expressions of ``var``'s array items in layout order (statements binding nested objects go to
        ``body``)."""
        layout = LAYOUTS[self.cls]
        patches = {i: (enc, dec) for i, enc, dec in self.patches}
        items = []
        for i, name in enumerate(layout):
            if i not in patches:
                items.append(f"{var}.{name}")
                continue
            enc, dec = patches[i]
            nested = getattr(dec, "__self__", None)
            ref = f"{var}_{i}"
            if isinstance(nested, _Positional) and nested.patches and not nested.optional:
                body.append(f"    {ref} = {var}.{name}")
                inner = nested._compiled_items(ref, body, namespace)
                body.append(f"    {ref} = ({', '.join(inner)},)")
                items.append(ref)
            else:
                namespace[f"_e{ref}"] = enc
                items.append(f"_e{ref}({var}.{name})")
        return items


def _nested(codec: _Positional) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    return codec.encode, codec.decode


_EPISODE = _Positional(Episode, {})
_PENDING_ACTION = _Positional(PendingAction, {})
_EPISODE_STATE = _Positional(EpisodeState, {})


def _encode_episodes(state: EpisodeState | None) -> list[Any] | None:
    if state is None:
        return None
    return [
        [_EPISODE.encode(e) for e in state.episodes],
        [_PENDING_ACTION.encode(a) for a in state.pending],
        state.totals,
        state.suppressed,
        state.stale_actions,
    ]


def _decode_episodes(values: list[Any] | None) -> EpisodeState | None:
    if values is None:
        return None
    values = list(values)
    if values:
        # most alerted customers have an episode or two: built in line (``_EPISODE.decode`` of a copy, without
        # the copy and the call)
        size = _EPISODE.size
        values[0] = [Episode(*e) if len(e) <= size else Episode(*e[:size]) for e in values[0]]
    if len(values) > 1:
        values[1] = [_PENDING_ACTION.decode(list(a)) for a in values[1]]
    return _EPISODE_STATE.decode(values)


_CUSTOMER = _Positional(
    CustomerState,
    {
        "orders": _nested(_Positional(OrderState, {})),
        "voice": _nested(_Positional(VoiceState, {})),
        "service": _nested(_Positional(ServiceState, {"folded": _nested(_Positional(Folded, {}))})),
        "purchases": _nested(_Positional(PurchaseDays, {})),
        "churn": _nested(_Positional(ChurnState, {})),
        "recent_ids": (_pack_ids, _unpack_ids),
        "episodes": (_encode_episodes, _decode_episodes),
    },
    # clv_cents: only PULSE_VIP_VALUE=clv sets it; episodes: only a customer ever alerted or acted on has them
    optional=2,
)


_decode_customer = _CUSTOMER.compiled_decode()
_encode_customer = _CUSTOMER.compiled_encode()


def encode_state(state: CustomerState) -> bytes:
    """Positional MessagePack behind a version byte: no field names, so about a quarter of the orjson record."""
    return _V1 + _encoder.encode(_encode_customer(state))


def decode_state(raw: bytes | None) -> CustomerState:
    """Format 1, or an orjson record (existing changelogs hold them); no record at all is a new customer."""
    if not raw:
        return CustomerState()
    first = raw[0]
    if first == FORMAT_VERSION:
        return _decode_customer(_decoder.decode(raw[1:]))
    if first == _LEGACY_FIRST:
        return _decode_orjson(raw)
    raise ValueError(f"unknown customer state format {first:#04x} (a newer writer, or not a state record)")


#: the CustomerState fields the orjson format knew (format 1 appended the outbox after them)
_ORJSON_FIELDS = LAYOUTS[CustomerState][: LAYOUTS[CustomerState].index("activity") + 1]


def encode_state_orjson(state: CustomerState) -> bytes:
    """The record as written before format 1: for tests of the old records' decoding only."""
    return orjson.dumps({name: getattr(state, name) for name in _ORJSON_FIELDS}, option=orjson.OPT_NON_STR_KEYS)


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
    return CustomerState(**data)
