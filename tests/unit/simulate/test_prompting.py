"""The closed-loop arm's prompt arms: a sticky split of users, each arm's assistant, and the
mapping of the registry's examples to intents."""

from __future__ import annotations

import pytest

from closedloop.embed.lexical import LexicalEmbedder
from closedloop.sdk.prompts import bucket
from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.prompting import PromptArms, _mapped
from closedloop.simulate.world import KBEntry

USERS = [f"user-{n}" for n in range(4000)]


@pytest.fixture(scope="module")
def base() -> Assistant:
    return Assistant(
        TextVectors(LexicalEmbedder()),
        [("cancel my card", "card"), ("what is the weather", "weather")],
        {"card": KBEntry("Call the card line.", 0), "hours": KBEntry("We open 9 to 5.", 0)},
        k=1,
    )


def test_the_split_is_sticky_near_the_share_and_drawn_anew_for_each_test(
    base: Assistant,
) -> None:
    arms = PromptArms(production=base, version=1, candidate=base, candidate_version=2, share=0.3)
    first = PromptArms(**{**arms.__dict__, "test_id": 7})
    again = PromptArms(**{**arms.__dict__, "test_id": 7})
    other = PromptArms(**{**arms.__dict__, "test_id": 8})
    chosen = [first.arm_of(u) for u in USERS]
    assert chosen == [again.arm_of(u) for u in USERS], "a user stays in one arm"
    assert chosen == [bucket(7, u) < 0.3 for u in USERS], "the SDK's split"
    assert abs(sum(chosen) / len(USERS) - 0.3) < 0.03
    redrawn = [other.arm_of(u) for u in USERS]
    assert abs(sum(redrawn) / len(USERS) - 0.3) < 0.03
    assert sum(a and b for a, b in zip(chosen, redrawn, strict=True)) < 0.15 * len(USERS), (
        "another test splits the users independently (about 0.3 x 0.3 in both)"
    )


def test_without_a_test_everyone_is_served_production(base: Assistant) -> None:
    arms = PromptArms(production=base, version=3)
    assert not any(arms.arm_of(u) for u in USERS[:200])
    intents, versions = arms.predict(["cancel my card please"] * 3, USERS[:3])
    assert intents == ["card"] * 3 and versions == ["3"] * 3


def test_each_user_is_answered_by_the_assistant_of_their_arm(base: Assistant) -> None:
    candidate = base.with_examples([("when do you open", "hours")])
    arms = PromptArms(
        production=base,
        version=1,
        candidate=candidate,
        candidate_version=2,
        share=0.5,
        test_id=1,
    )
    users = USERS[:400]
    intents, versions = arms.predict(["when do you open"] * len(users), users)
    for user, intent, version in zip(users, intents, versions, strict=True):
        in_candidate = arms.arm_of(user)
        assert (intent, version) == (("hours", "2") if in_candidate else ("card", "1"))
    assert 150 < versions.count("2") < 250
    with pytest.raises(ValueError, match="one user per text"):
        arms.predict(["a", "b"], ["user-1"])


def test_examples_map_to_intents_by_their_answer_and_the_newest_label_wins() -> None:
    answers = {"We open 9 to 5.": "hours", "Call the card line.": "card"}
    newest_first = [
        {"input": "is it open", "output": "We open 9 to 5."},
        {"input": "refund?", "output": "An answer the app does not know yet."},
        {"input": "is it open", "output": "Call the card line."},
        {"input": None, "output": "We open 9 to 5."},
        {"input": "lost card", "output": "Call the card line."},
    ]
    assert _mapped(newest_first, answers.get) == [
        ("lost card", "card"),
        ("is it open", "card"),
        ("is it open", "hours"),
    ]
    twin = Assistant(TextVectors(LexicalEmbedder()), [], {}, k=1)
    twin.add_examples(_mapped(newest_first, answers.get))
    assert dict(twin.examples)["is it open"] == "hours"
