"""Text cues: lexicon phrases (zh + en), negation, repeated questions, user extension."""

from __future__ import annotations

import pytest

from calltone.emotion.lexicon import Lexicon, RepeatDetector, default_lexicon, looks_like_question, similarity


@pytest.fixture(scope="module")
def lex() -> Lexicon:
    return default_lexicon()


def cats(lex: Lexicon, text: str) -> list[str]:
    return [m.category for m in lex.match(text)]


@pytest.mark.parametrize(
    "text, category",
    [
        ("我要投诉你们！", "escalation"),
        ("叫你们领导来接电话", "escalation"),
        ("我要找你们经理", "escalation"),
        ("让你们主管跟我说", "escalation"),
        ("我要退款", "refund"),
        ("你们这样太过分了", "anger"),
        ("你们就是骗子", "anger"),
        ("我要曝光你们", "escalation"),
        ("我去找媒体", "escalation"),
        ("我要打12315", "escalation"),
        ("我去消费者协会告你们", "escalation"),
        ("我会请律师", "escalation"),
        ("这已经是我第三次打电话了", "repeat_contact"),
        ("我很着急", "urgency"),
        ("这可怎么办啊", "worry"),
        ("我真的很担心", "worry"),
        ("I want to file a complaint", "escalation"),
        ("Let me speak to your manager", "escalation"),
        ("I want a supervisor now", "escalation"),
        ("I want a refund", "refund"),
        ("Please cancel my account", "churn"),
        ("I'll talk to my lawyer", "escalation"),
        ("This is ridiculous", "anger"),
        ("That's unacceptable", "anger"),
        ("This is the third time I'm calling", "repeat_contact"),
        ("I'm worried about my money", "worry"),
        ("It's urgent", "urgency"),
        ("Please fix it as soon as possible", "urgency"),
    ],
)
def test_phrases(lex: Lexicon, text: str, category: str) -> None:
    assert category in cats(lex, text)


def test_match_fields_and_span(lex: Lexicon) -> None:
    text = "Honestly, THIS IS RIDICULOUS. Get me a Supervisor!"
    ms = lex.match(text)
    assert [m.category for m in ms] == ["anger", "escalation"]
    for m in ms:
        assert text[m.span[0] : m.span[1]] == m.text
        assert m.weight > 0 and m.grade in ("anxious", "angry") and m.label
    assert ms[0].text == "THIS IS RIDICULOUS"
    assert ms[1].text == "Supervisor"
    cue = ms[1].to_cue()
    assert cue.name == "phrase.escalation" and cue.text == "Supervisor"


def test_chinese_traditional_and_fullwidth(lex: Lexicon) -> None:
    text = "我要投訴，找你們經理！打１２３１５"
    ms = lex.match(text)
    assert [m.text for m in ms] == ["投訴", "找你們經理", "１２３１５"]
    assert all(text[m.span[0] : m.span[1]] == m.text for m in ms)


def test_chinese_spaces_between_characters(lex: Lexicon) -> None:
    assert "escalation" in cats(lex, "找 你们 领导")


def test_english_word_boundaries_case_insensitive(lex: Lexicon) -> None:
    assert cats(lex, "I'm a complainer?") == []  # 'complain' not inside a longer word
    assert cats(lex, "SUPERVISOR") == ["escalation"]
    assert cats(lex, "Sue here, calling about my bill") == []
    assert "worry" in cats(lex, "im worried")  # apostrophe optional


def test_longer_match_wins_overlap(lex: Lexicon) -> None:
    ms = lex.match("I want to speak to your manager")
    assert len(ms) == 1 and ms[0].text == "speak to your manager" and ms[0].weight == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "I don't want to cancel my account",
        "I'm not angry",
        "I do not want a refund",
        "我不是要投诉",
        "我没有投诉",
        "我不想退款",
        "没有生气",
        "不用找你们领导",
    ],
)
def test_negated(lex: Lexicon, text: str) -> None:
    assert lex.match(text) == []
    ms = lex.match(text, include_negated=True)
    assert ms and all(m.negated for m in ms)


@pytest.mark.parametrize(
    "text, category",
    [
        ("我不知道怎么办", "worry"),  # 不知道 is not a negation
        ("我对你们很不满意要投诉", "escalation"),  # 不满 is not a negation
        ("不是要退款，是要投诉", "escalation"),  # negation does not cross the clause
        ("No, I want a refund", "refund"),
        ("I don't know what to do", "worry"),
        ("Not only is it late, this is ridiculous", "anger"),
    ],
)
def test_not_negated(lex: Lexicon, text: str, category: str) -> None:
    assert category in cats(lex, text)


def test_negation_only_in_window(lex: Lexicon) -> None:
    # the negator is far before the phrase (more than 3 words)
    assert "refund" in cats(lex, "I never thought I would ask for a refund")


def test_question_heuristic() -> None:
    assert looks_like_question("什么时候能退款")
    assert looks_like_question("when will I get my refund")
    assert looks_like_question("my refund?")
    assert not looks_like_question("I want my refund")


def test_similarity() -> None:
    assert similarity("什么时候能退款？", "什么时候能退款啊？") > 0.85
    assert similarity("什么时候能退款？", "那我的退款什么时候能到？") >= 0.75
    assert similarity("When will I get my refund?", "How do I change my password?") < 0.5


def test_repeated_question_zh(lex: Lexicon) -> None:
    det = RepeatDetector.for_lexicon(lex)
    assert det.add(5.0, "什么时候能退款？") is None
    assert det.add(12.0, "好的好的") is None
    assert det.add(20.0, "我的账单为什么这么多？") is None
    m = det.add(40.0, "那我的退款什么时候能到？")
    assert m is not None and m.category == "repeat_question" and m.grade == "anxious"
    assert m.phrase == "什么时候能退款？" and m.t == 40.0 and "2nd" in m.label
    m3 = det.add(60.0, "什么时候能退款啊？")
    assert m3 is not None and "3rd" in m3.label and m3.weight > m.weight


def test_repeated_question_en_and_window(lex: Lexicon) -> None:
    det = RepeatDetector.for_lexicon(lex)
    assert det.add(0.0, "When will I get my refund?") is None
    assert det.add(10.0, "How do I change my password?") is None
    assert det.add(20.0, "So when will I get my refund?") is not None
    # statements and short utterances are not questions
    assert det.add(25.0, "I want my refund.") is None
    assert det.add(26.0, "Okay?") is None
    # outside the window it is a fresh question
    late = RepeatDetector.for_lexicon(lex)
    late.add(0.0, "When will I get my refund?")
    assert late.add(0.0 + lex.repeat.window_s + 1.0, "When will I get my refund?") is None


def test_user_extension_file(tmp_path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text(
        """
[categories.threat_to_leave]
grade = "angry"
label = "threatened to switch bank"

[[entry]]
category = "threat_to_leave"
weight = 0.9
zh = ["转到别的银行"]
en = ["switch banks", "move my money"]

[[entry]]
category = "escalation"
weight = 1.0
label = "asked for the branch head"
zh = ["找*行长"]

[negation.en]
window = 2

[repeat]
threshold = 0.9
""",
        encoding="utf-8",
    )
    lex = Lexicon.load(extra=extra)
    assert cats(lex, "我要把钱转到别的银行") == ["threat_to_leave"]
    assert cats(lex, "I will move my money") == ["threat_to_leave"]
    assert cats(lex, "我要找你们行长") == ["escalation"]
    assert "escalation" in cats(lex, "我要投诉")  # packaged entries are kept
    assert lex.negation["en"].window == 2 and lex.negation["en"].negators  # override merges key by key
    assert lex.repeat.threshold == 0.9
    with pytest.raises(FileNotFoundError):
        Lexicon.load(extra=tmp_path / "missing.toml")


def test_bad_extension_rejected(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[entry]]\ncategory = "nope"\nweight = 1.0\nen = ["x"]\n', encoding="utf-8")
    with pytest.raises(ValueError):
        Lexicon.load(extra=bad)
