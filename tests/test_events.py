"""The event schema: parsing round trip, and the committed JSON Schema is current."""

import json

from calltone.events import EmotionUpdate, Probs, TranscriptFinal, event_json_schema, parse_event

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
