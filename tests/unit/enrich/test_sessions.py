"""Enrich one session: derived rephrase and abandonment, quality per turn, the summary."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.enrich.measures import Measure, MeasureParams
from closedloop.enrich.sessions import SessionParams, Turn, enrich_session, user_text
from closedloop.events import SIGNAL_KINDS, Feedback, Message, Signal

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LATER = T0 + dt.timedelta(days=1)  # every abandonment window has closed
SOON = T0 + dt.timedelta(seconds=60)  # every abandonment window is still open
INDICATORS = ("rephrase", "abandon")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def sig(turn_id: str, kind: str, **fields: object) -> Signal:
    return Signal(interaction_id=turn_id, kind=kind, **fields)  # type: ignore[arg-type]


def turn(
    id: str,
    seconds: float,
    input_text: str | None = None,
    output: str | None = "An answer.",
    *,
    signals: tuple[tuple[float, Signal], ...] = (),
    feedback: tuple[tuple[float, Feedback], ...] = (),
) -> Turn:
    return Turn(
        id=id,
        ts=at(seconds),
        input_text=input_text,
        output=output,
        signals=tuple((at(s), x) for s, x in signals),
        feedback=tuple((at(s), x) for s, x in feedback),
    )


def names(measures: tuple[Measure, ...]) -> list[str]:
    return [m.name for m in measures]


def only(measures: tuple[Measure, ...], name: str) -> list[Measure]:
    return [m for m in measures if m.name == name]


# -- derived rephrase ---------------------------------------------------------------------


def test_similar_consecutive_inputs_put_a_derived_rephrase_on_the_earlier_turn() -> None:
    # processed: "reset password" vs "reset my password": 3 insertions over 14 + 17 characters
    turns = [turn("a", 0, "Reset password"), turn("b", 30, "reset my password?")]
    result = enrich_session(turns, now=SOON)
    a, b = result.turns
    assert [(m.name, m.source) for m in a.measures] == [
        ("rephrase", "derived"),
        ("rephrase_similarity", "derived"),
    ]
    assert only(a.measures, "rephrase")[0].value == 1.0
    assert only(a.measures, "rephrase_similarity")[0].value == pytest.approx(28 / 31)
    assert b.measures == ()  # the later turn is the rephrase, not the rephrased answer


def test_a_rephrase_is_derived_at_the_threshold_itself() -> None:
    params = SessionParams(measures=MeasureParams(rephrase_threshold=1.0))
    turns = [turn("a", 0, "Reset password!"), turn("b", 30, "RESET password")]
    result = enrich_session(turns, now=SOON, params=params)
    assert names(result.turns[0].measures) == ["rephrase", "rephrase_similarity"]
    assert only(result.turns[0].measures, "rephrase_similarity")[0].value == 1.0


def test_inputs_below_the_threshold_derive_no_rephrase() -> None:
    turns = [
        turn("a", 0, "reset password"),
        turn("b", 30, "thanks, and how do I delete my account?"),
    ]
    assert enrich_session(turns, now=SOON).turns[0].measures == ()
    # 28/31 ~ 0.903 lies below a stricter threshold
    strict = SessionParams(measures=MeasureParams(rephrase_threshold=0.95))
    turns = [turn("a", 0, "reset password"), turn("b", 30, "reset my password")]
    assert enrich_session(turns, now=SOON, params=strict).turns[0].measures == ()


def test_a_missing_input_derives_no_rephrase() -> None:
    turns = [turn("a", 0, None), turn("b", 30, "reset password"), turn("c", 60, None)]
    result = enrich_session(turns, now=SOON)
    assert all(r.measures == () for r in result.turns)


def test_rephrase_is_derived_between_each_consecutive_pair_only() -> None:
    turns = [
        turn("a", 0, "reset password"),
        turn("b", 30, "reset my password"),
        turn("c", 60, "what is the weather in Paris"),
        turn("d", 90, "reset my password"),
    ]
    result = enrich_session(turns, now=SOON)
    assert [names(r.measures) for r in result.turns] == [
        ["rephrase", "rephrase_similarity"],
        [],
        [],
        [],
    ]


def test_a_client_rephrase_suppresses_the_derived_one() -> None:
    client = sig("a", "rephrase", text="reset my password")
    turns = [
        turn("a", 0, "reset password", signals=((20, client),)),
        turn("b", 30, "reset my password"),
    ]
    result = enrich_session(turns, now=SOON)
    a = result.turns[0]
    rephrases = only(a.measures, "rephrase")
    assert [(m.source, m.value) for m in rephrases] == [("client", 1.0)]
    # the similarity of the client's rephrase is computed from the turn's own input, once
    assert [m.value for m in only(a.measures, "rephrase_similarity")] == [pytest.approx(28 / 31)]


# -- derived abandonment ------------------------------------------------------------------


def test_an_unanswered_last_turn_past_the_window_is_abandoned_on_the_last_turn_only() -> None:
    turns = [
        turn("a", 0, "what is an invoice"),
        turn("b", 30, "how do I pay by card"),
        turn("c", 60, "where do I see my plan"),
    ]
    result = enrich_session(turns, now=at(60 + 1800))  # the window closes at 1800 s exactly
    assert result.summary.abandoned is True
    assert result.summary.abandon_source == "derived"
    assert [only(r.measures, "abandon") for r in result.turns] == [
        [],
        [],
        [Measure(name="abandon", value=1.0, source="derived")],
    ]


def test_an_open_window_leaves_abandonment_undecided() -> None:
    result = enrich_session([turn("a", 0, "hi")], now=at(1799))
    assert result.summary.abandoned is None
    assert result.summary.abandon_source is None
    assert result.turns[0].measures == ()


def test_the_window_length_is_a_parameter() -> None:
    params = SessionParams(abandon_after_seconds=60)
    result = enrich_session([turn("a", 0, "hi")], now=at(61), params=params)
    assert result.summary.abandoned is True
    assert names(result.turns[0].measures) == ["abandon"]


@pytest.mark.parametrize(
    "answered",
    [
        turn("a", 0, "hi", signals=((10, sig("a", "copy")),)),
        turn("a", 0, "hi", signals=((10, sig("a", "edit", text="An answer")),)),
        turn("a", 0, "hi", feedback=((10, Feedback(interaction_id="a", comment="ok")),)),
        turn("a", 0, "hi", signals=((1800, sig("a", "regenerate")),)),  # at the window's end
    ],
    ids=["copy", "edit", "feedback", "at-the-end"],
)
def test_a_follow_up_within_the_window_means_not_abandoned(answered: Turn) -> None:
    result = enrich_session([answered], now=LATER)
    assert result.summary.abandoned is False
    assert result.summary.abandon_source is None
    assert only(result.turns[0].measures, "abandon") == []


def test_a_follow_up_after_the_window_does_not_save_the_answer() -> None:
    result = enrich_session([turn("a", 0, "hi", signals=((1801, sig("a", "copy")),))], now=LATER)
    assert result.summary.abandoned is True
    assert result.summary.abandon_source == "derived"
    assert names(result.turns[0].measures) == ["copy", "abandon"]


def test_a_dwell_is_passive_and_does_not_save_the_answer() -> None:
    dwell = sig("a", "dwell", duration_ms=12_500)
    result = enrich_session([turn("a", 0, "hi", signals=((10, dwell),))], now=LATER)
    assert result.summary.abandoned is True
    assert result.summary.abandon_source == "derived"
    assert [(m.name, m.value, m.source) for m in result.turns[0].measures] == [
        ("dwell_seconds", 12.5, "client"),
        ("abandon", 1.0, "derived"),
    ]


def test_a_client_abandon_wins_and_is_counted_once() -> None:
    client = sig("a", "abandon")
    # window still open: only the client's signal decides
    result = enrich_session([turn("a", 0, "hi", signals=((5, client),))], now=at(10))
    assert result.summary.abandoned is True
    assert result.summary.abandon_source == "client"
    assert [(m.name, m.source) for m in result.turns[0].measures] == [("abandon", "client")]
    # window closed as well: still one abandon, the client's
    result = enrich_session([turn("a", 0, "hi", signals=((5, client),))], now=LATER)
    assert result.summary.abandon_source == "client"
    assert [(m.name, m.source) for m in result.turns[0].measures] == [("abandon", "client")]


def test_a_client_abandon_on_an_earlier_turn_is_not_counted_again_as_derived() -> None:
    # The app joins its abandon signal to turn "a", but sends it after turn "b" was answered;
    # the window of "b" is still open, so the client's signal alone ends the session.
    turns = [
        turn("a", 0, "what is an invoice", signals=((60, sig("a", "abandon")),)),
        turn("b", 30, "how do I pay by card"),
    ]
    result = enrich_session(turns, now=at(90))
    assert result.summary.abandoned is True
    every_abandon = [(r.id, m.source) for r in result.turns for m in only(r.measures, "abandon")]
    assert every_abandon == [("a", "client")]  # one event, one measure
    assert result.summary.abandon_source == "client"


def test_derive_false_adds_no_derived_measure() -> None:
    params = SessionParams(derive=False)
    turns = [turn("a", 0, "reset password"), turn("b", 30, "reset my password")]
    result = enrich_session(turns, now=LATER, params=params)
    assert all(r.measures == () for r in result.turns)
    assert result.summary.abandoned is None
    assert result.summary.abandon_source is None
    assert all(r.quality.basis == "prior" for r in result.turns)


def test_derive_false_keeps_the_client_signals() -> None:
    params = SessionParams(derive=False)
    signals = ((5, sig("a", "copy")), (10, sig("a", "abandon")))
    result = enrich_session([turn("a", 0, "hi", signals=signals)], now=LATER, params=params)
    assert [(m.name, m.source) for m in result.turns[0].measures] == [
        ("copy", "client"),
        ("abandon", "client"),
    ]
    # the app said the user left after the answer: its word decides, though a copy came first
    assert (result.summary.abandoned, result.summary.abandon_source) == (True, "client")


def test_derive_false_with_only_a_client_abandon_reports_it() -> None:
    params = SessionParams(derive=False)
    result = enrich_session(
        [turn("a", 0, "hi", signals=((5, sig("a", "abandon")),))], now=LATER, params=params
    )
    assert result.summary.abandoned is True
    assert result.summary.abandon_source == "client"
    assert [(m.name, m.source) for m in result.turns[0].measures] == [("abandon", "client")]


# -- quality and summary ------------------------------------------------------------------


def test_explicit_feedback_wins_over_implicit_measures() -> None:
    fb = Feedback(interaction_id="a", rating=4)  # (4 - 1) / (5 - 1)
    signals = ((5, sig("a", "regenerate")), (6, sig("a", "escalate")))
    result = enrich_session([turn("a", 0, "hi", signals=signals, feedback=((7, fb),))], now=LATER)
    q = result.turns[0].quality
    assert (q.value, q.basis) == (0.75, "explicit")
    assert [e.name for e in q.evidence] == ["rating"]


def test_implicit_basis_when_there_are_only_signals() -> None:
    result = enrich_session([turn("a", 0, "hi", signals=((5, sig("a", "copy")),))], now=LATER)
    q = result.turns[0].quality
    assert (q.value, q.basis) == (0.75, "implicit")  # (1 * 0.5 + 1 * 1) / 2


def test_prior_basis_when_there_is_nothing() -> None:
    result = enrich_session([turn("a", 0, "hi")], now=SOON)
    q = result.turns[0].quality
    assert (q.value, q.basis, q.evidence) == (0.5, "prior", ())


def test_derived_measures_vote_in_the_quality() -> None:
    turns = [turn("a", 0, "reset password"), turn("b", 30, "reset my password")]
    result = enrich_session(turns, now=LATER)
    a, b = result.turns
    assert a.quality.value == pytest.approx(0.5 / 2.5)  # rephrase: weight 1.5, target 0
    assert b.quality.value == pytest.approx(0.5 / 2.0)  # abandon: weight 1, target 0
    assert result.summary.mean_quality == pytest.approx((0.2 + 0.25) / 2)


def test_summary_counts_and_bounds() -> None:
    turns = [
        turn(
            "a",
            0,
            "what is an invoice",
            signals=((5, sig("a", "copy")), (8, sig("a", "dwell", duration_ms=3_000))),
            feedback=((9, Feedback(interaction_id="a", thumbs=1)),),
        ),
        turn(
            "b",
            100,
            "how do I pay by card",
            signals=((4000, sig("b", "accept")),),
            feedback=(
                (150, Feedback(interaction_id="b", thumbs=-1)),
                (160, Feedback(interaction_id="b", comment="wrong")),
            ),
        ),
        turn("c", 200, "where is my plan"),
    ]
    result = enrich_session(turns, now=LATER)
    s = result.summary
    assert (s.turns, s.feedback_count, s.signal_count) == (3, 3, 3)
    assert s.first_ts == at(0)
    assert s.last_ts == at(4000)  # a late signal of an earlier turn
    assert s.last_interaction_id == "c"
    values = [r.quality.value for r in result.turns]
    assert values == [1.0, 0.0, 0.25]  # thumbs up; thumbs down; derived abandon
    assert s.mean_quality == pytest.approx(sum(values) / 3)


def test_last_ts_counts_feedback() -> None:
    fb = Feedback(interaction_id="a", thumbs=1)
    result = enrich_session([turn("a", 0, "hi", feedback=((500, fb),))], now=SOON)
    assert result.summary.last_ts == at(500)


def test_first_ts_is_the_earliest_event_of_the_timeline() -> None:
    # the browser's clock runs behind the app server's: its signal predates the answer
    early = sig("a", "copy")
    result = enrich_session([turn("a", 10, "hi", signals=((4, early),))], now=SOON)
    assert result.summary.first_ts == at(4)
    assert result.summary.last_ts == at(10)


# -- edits, user text, empty sessions -------------------------------------------------------


def test_edit_measures_use_the_turn_output() -> None:
    edit = sig("a", "edit", text="abce")
    result = enrich_session([turn("a", 0, "hi", output="abcd", signals=((5, edit),))], now=at(10))
    got = {m.name: (m.value, m.source) for m in result.turns[0].measures}
    # Indel: delete d, insert e -> 2 edits over 8 characters
    assert got == {
        "edit_similarity": (0.75, "derived"),
        "edit_distance": (0.25, "derived"),
        "kept_length_ratio": (1.0, "derived"),
    }
    assert result.turns[0].quality.value == pytest.approx((0.5 + 3 * 0.75) / 4)


def test_an_edit_without_the_output_measures_nothing() -> None:
    edit = sig("a", "edit", text="abce")
    result = enrich_session([turn("a", 0, "hi", output=None, signals=((5, edit),))], now=at(10))
    assert result.turns[0].measures == ()


def test_each_turn_measures_its_own_output() -> None:
    turns = [
        turn("a", 0, "one", output="abcd", signals=((5, sig("a", "edit", text="abcd")),)),
        turn("b", 30, "two", output="wxyz", signals=((35, sig("b", "edit", text="abcd")),)),
    ]
    result = enrich_session(turns, now=at(40))
    assert [only(r.measures, "edit_similarity")[0].value for r in result.turns] == [1.0, 0.0]


def test_user_text_of_plain_input_is_the_text() -> None:
    assert user_text("reset my password") == "reset my password"
    assert user_text("") == ""


def test_user_text_of_chat_input_is_the_last_user_message() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="first question"),
        Message(role="assistant", content="an answer"),
        Message(role="user", content="second question"),
        Message(role="assistant", content="another answer"),
    ]
    assert user_text(messages) == "second question"


def test_user_text_skips_empty_user_messages_and_may_find_none() -> None:
    messages = [
        Message(role="user", content="the question"),
        Message(role="user", content=""),
        Message(role="user"),
    ]
    assert user_text(messages) == "the question"
    assert user_text([Message(role="system", content="Be brief.")]) is None
    assert user_text([]) is None


def test_a_session_without_turns_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one turn"):
        enrich_session([], now=T0)


# -- properties ---------------------------------------------------------------------------

INPUTS = st.sampled_from(
    ["reset password", "reset my password", "Reset password?", "delete my account", "hi", ""]
)


def _signal(turn_id: str, kind: str, draw: st.DrawFn) -> Signal:
    if kind == "edit":
        return sig(turn_id, kind, text=draw(st.text(max_size=12)))
    if kind == "dwell":
        return sig(turn_id, kind, duration_ms=draw(st.floats(0, 1e7)))
    if kind == "click":
        return sig(turn_id, kind, rank=draw(st.none() | st.integers(0, 20)))
    if kind == "rephrase":
        return sig(turn_id, kind, text=draw(st.none() | INPUTS))
    return sig(turn_id, kind)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[Turn], dt.datetime]:
    count = draw(st.integers(1, 5))
    turns: list[Turn] = []
    seconds = 0.0
    for i in range(count):
        seconds += draw(st.floats(0, 3_000))
        turn_id = f"t{i}"
        kinds = draw(st.lists(st.sampled_from(SIGNAL_KINDS), unique=True, max_size=4))
        signals = tuple(
            (at(seconds + draw(st.floats(0, 4_000))), _signal(turn_id, kind, draw))
            for kind in kinds
        )
        feedback = tuple(
            (at(seconds + draw(st.floats(0, 4_000))), Feedback(interaction_id=turn_id, thumbs=t))
            for t in draw(st.lists(st.sampled_from([-1, 1]), max_size=2))
        )
        turns.append(
            Turn(
                id=turn_id,
                ts=at(seconds),
                input_text=draw(st.none() | INPUTS),
                output=draw(st.none() | st.text(max_size=12)),
                signals=signals,
                feedback=feedback,
            )
        )
    now = at(seconds + draw(st.floats(0, 10_000)))
    return turns, now


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(sessions(), st.booleans())
def test_session_properties(session: tuple[list[Turn], dt.datetime], derive: bool) -> None:
    turns, now = session
    result = enrich_session(turns, now=now, params=SessionParams(derive=derive))
    assert [r.id for r in result.turns] == [t.id for t in turns]
    for r in result.turns:
        for name in INDICATORS:
            assert len(only(r.measures, name)) <= 1, (r.id, name, r.measures)
        assert 0.0 <= r.quality.value <= 1.0
    assert 0.0 <= result.summary.mean_quality <= 1.0
    assert result.summary.turns == len(turns)
    derived = [
        (i, m.name)
        for i, r in enumerate(result.turns)
        for m in r.measures
        if m.source == "derived" and m.name in INDICATORS
    ]
    if not derive:
        assert derived == []
    last = len(turns) - 1
    assert all(i == last for i, name in derived if name == "abandon")
    assert all(i < last for i, name in derived if name == "rephrase")
