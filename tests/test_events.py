"""The event schema: parsing round trip, and the committed JSON Schema is current."""

import json

from calltone.events import (EmotionUpdate, Probs, TranscriptFinal, call_id_from_name, event_json_schema, parse_event,
                             valid_call_id)

from .conftest import REPO


def test_committed_json_schema_is_current():
    committed = json.loads((REPO / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    assert committed == event_json_schema(), "run: calltone schema > docs/events.schema.json"


def test_events_round_trip_by_type():
    events = [
        TranscriptFinal(call_id="c", t=2.0, channel="customer", start=0.5, end=2.0, text="我要投诉", language="zh"),
        EmotionUpdate(call_id="c", t=3.0, channel="customer", grade="angry", probs=Probs(calm=0.1, anxious=0.2, angry=0.7), index=81.0),
    ]
    for e in events:
        back = parse_event(e.model_dump_json())
        assert type(back) is type(e) and back == e
    assert parse_event({"type": "call.ended", "call_id": "c", "summary": {"duration_s": 1}}).type == "call.ended"


def test_call_ids_from_recording_names_are_valid_and_distinct():
    names = ["call-01", "投诉电话", "<img src=x onerror=alert(1)>", "a b", "a_b", "x" * 300]
    ids = [call_id_from_name(n) for n in names]
    assert all(valid_call_id(i) for i in ids), ids
    assert ids[0] == "call-01" and ids[4] == "a_b"  # valid names are kept as they are
    assert len(set(ids)) == len(ids)
    assert "<" not in ids[2] and ids[2].startswith("img_src_x")
