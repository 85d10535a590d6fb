"""The complexity classifier: keyword sets by precedence, word starts, multi-word entries, the length threshold."""

from __future__ import annotations

import pytest

from llm_rpc.config import ComplexitySettings
from llm_rpc.core.policy import classify


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("Deploy the new build to production", "critical"),
        ("please DELETE the old records", "critical"),
        ("update the payment provider", "critical"),
        ("rotate the credentials", "critical"),  # "credential" matches a word starting with it
        ("drop   table users", "critical"),  # a multi-word entry, any whitespace between
        ("research the options and analyze them", "complex"),
        ("design a schema", "complex"),
        ("security review of the login flow", "complex"),
        ("audit the logs", "complex"),
        ("summarize this paragraph", "simple"),
        ("translate to French", "simple"),
        ("define entropy", "simple"),
        ("summarize the security audit before we deploy", "critical"),  # critical words win over the others
        ("summarize the security audit", "complex"),  # complex words win over simple ones
        ("what time is it", "simple"),  # short, no words: simple
        ("word " * 40, "moderate"),  # 200 characters and more, no words: moderate
        ("", "simple"),
        ("undeployable", "simple"),  # a word must start with the entry
    ],
)
def test_the_default_classifier(text: str, tier: str) -> None:
    assert classify(text) == tier


def test_the_word_lists_and_the_threshold_are_configurable() -> None:
    settings = ComplexitySettings(critical=["launch"], complex=["think"], simple=[], moderate_min_chars=10)
    assert classify("launch it", settings) == "critical"
    assert classify("deploy it", settings) == "simple"  # the default words are replaced, not extended
    assert classify("think about it", settings) == "complex"
    assert classify("summarize this", settings) == "moderate"  # no simple words: length decides
    assert classify("hi", settings) == "simple"


def test_a_summary_of_a_long_text_stays_simple() -> None:
    assert classify("summarize: " + "lorem ipsum " * 500) == "simple"
