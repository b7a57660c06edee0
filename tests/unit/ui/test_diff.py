"""The word diff of the interaction page: inserts, deletes, replacements, identical and empty
texts, unicode, escaping of HTML in the texts, and long texts."""

from __future__ import annotations

import re
from html import unescape

from markupsafe import Markup

from closedloop.ui.diff import diff_stats, word_diff

_TAG = re.compile(r"</?(?:del|ins)>")


def sides(html: str) -> tuple[str, str]:
    """The text before (without the insertions) and after (without the deletions)."""
    before = re.sub(r"<ins>.*?</ins>", "", html, flags=re.S)
    after = re.sub(r"<del>.*?</del>", "", html, flags=re.S)
    return _TAG.sub("", before), _TAG.sub("", after)


def test_an_inserted_word_is_in_ins_and_the_rest_unchanged() -> None:
    html = word_diff("the cat sat", "the black cat sat")
    assert isinstance(html, Markup)
    assert "<del>" not in html
    assert re.fullmatch(r"the ?<ins> ?black ?</ins> ?cat sat", str(html))
    assert diff_stats("the cat sat", "the black cat sat").added == 1


def test_a_deleted_word_is_in_del() -> None:
    html = str(word_diff("please do not reply", "please reply"))
    assert "<ins>" not in html
    assert re.search(r"<del>[^<]*do not[^<]*</del>", html)
    stats = diff_stats("please do not reply", "please reply")
    assert (stats.removed, stats.added, stats.kept) == (2, 0, 2)


def test_a_replacement_is_a_del_then_an_ins_and_adjacent_words_merge() -> None:
    html = str(word_diff("the quick brown fox", "a slow red fox"))
    assert html == "<del>the quick brown</del><ins>a slow red</ins> fox"


def test_identical_texts_have_no_change() -> None:
    text = "Nothing changed here.\nNot even this line."
    assert str(word_diff(text, text)) == text
    assert not diff_stats(text, text).changed


def test_empty_texts() -> None:
    assert str(word_diff("", "")) == ""
    assert str(word_diff(None, None)) == ""
    assert str(word_diff("", "new text")) == "<ins>new text</ins>"
    assert str(word_diff("old text", "")) == "<del>old text</del>"
    assert str(word_diff(None, "x")) == "<ins>x</ins>"


def test_unicode_words_are_whole_tokens() -> None:
    html = str(word_diff("Grüße aus München 🙂", "Grüße aus Zürich 🙂"))
    assert "<del>München</del><ins>Zürich</ins>" in html
    assert html.startswith("Grüße aus ") and html.endswith(" 🙂")
    assert sides(html) == ("Grüße aus München 🙂", "Grüße aus Zürich 🙂")


def test_html_in_either_text_is_escaped() -> None:
    before = 'Say <b>hi</b> & "bye"'
    after = "Say <script>alert(1)</script> <img src=x onerror=alert(1)>"
    html = str(word_diff(before, after))
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&amp;" in html
    assert tuple(unescape(side) for side in sides(html)) == (before, after)
    # only the diff's own tags are markup
    assert set(re.findall(r"<[^>]*>", html)) <= {"<del>", "</del>", "<ins>", "</ins>"}


def test_every_piece_of_both_texts_is_kept() -> None:
    before = "One. Two three four.\nFive six seven! Eight nine."
    after = "One. Two 3 four.\nFive seven! Eight nine ten.\nEleven."
    html = str(word_diff(before, after))
    assert sides(html) == (before, after)


def test_long_texts_show_a_small_edit_as_a_small_change() -> None:
    sentences = [f"Sentence number {k} says something about item {k}." for k in range(3000)]
    before = " ".join(sentences)
    changed = list(sentences)
    changed[1500] = "Sentence number 1500 says nothing at all."
    after = " ".join(changed)
    html = str(word_diff(before, after))
    assert sides(html) == (before, after)
    assert html.count("<del>") <= 2 and html.count("<ins>") <= 2
    stats = diff_stats(before, after)
    assert stats.removed <= 5 and stats.added <= 5


def test_a_long_text_rewritten_whole_is_still_a_correct_diff() -> None:
    before = "word " * 20_000
    after = "other " * 20_000
    html = str(word_diff(before, after))
    assert sides(html) == (before, after)


def test_texts_too_long_to_compare_are_one_change_shown_whole() -> None:
    before = "the same line again\n" * 3000  # repeated lines: the costliest case to match
    after = "the same line again, edited\n" * 3000
    html = str(word_diff(before, after))
    assert html.count("<del>") == 1 and html.count("<ins>") == 1
    assert sides(html) == (before, after)
