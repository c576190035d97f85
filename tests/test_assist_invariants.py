"""Stage 2 of refinement is code: whatever change set a model proposes, the trigger word stays first,
the locked traits stay (never removed, never mirrored), and nothing enters the prompt that the change
set did not name. Property-based: hypothesis draws prompts and change sets from a vocabulary full of
the dangerous tags (the trigger, locked traits, their mirrors, flip tags, re-weighted spellings)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.assist.apply import apply_changes
from sidecar.assist.changes import CHANGE as CHANGE_MODEL
from sidecar.assist.changes import REGIONS, AddChange, ChangeSet, ReplaceChange
from sidecar.assist.character import CharacterSheet
from sidecar.assist.tags import key, mirror, split_tags

SHEET = CharacterSheet(trigger="spyke_plasma_v1",
                       locked=["right bracer", "left knee pauldron", "ginger hair", "white cloak"],
                       locked_negative=["mirrored", "bare arms"])
FREE = ["1boy", "full body", "standing", "looking at viewer", "looking to the left", "dusk", "noon", "rooftop",
        "city", "simple background", "cowboy shot", "smile", "wind", "night"]
DANGEROUS = ["spyke_plasma_v1", "right bracer", "left bracer", "Right  Bracer", "(right bracer:1.3)",
             "left knee pauldron", "right knee pauldron", "ginger hair", "(ginger hair:1.2)", "white cloak",
             "mirrored", "flipped", "bare arms", "bracer on left arm", "black hair"]
TAG = st.sampled_from(FREE + DANGEROUS)
CHANGE = st.builds(
    lambda op, region, tag, other: CHANGE_MODEL.validate_python(
        {"op": op, "region": region, "tag": tag, **({"replacement": other} if op == "replace" else {})}),
    st.sampled_from(["add", "remove", "replace"]), st.sampled_from(REGIONS), TAG, TAG)
CHANGE_SETS = st.builds(lambda cs: ChangeSet(changes=cs), st.lists(CHANGE, max_size=12))
PROMPTS = st.builds(
    lambda free, at: [*free[:at], "spyke_plasma_v1", *free[at:]] + ["right bracer", "left knee pauldron",
                                                                     "(ginger hair:1.2)", "white cloak"],
    st.lists(st.sampled_from(FREE), max_size=6, unique=True), st.integers(0, 6))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(PROMPTS, CHANGE_SETS)
def test_any_change_set_keeps_the_trigger_first_and_the_locked_traits_unmirrored(prompt: list[str],
                                                                                  change_set: ChangeSet) -> None:
    result = apply_changes(prompt, change_set, SHEET)
    keys = [key(t) for t in result.tags]
    assert keys[0] == key("spyke_plasma_v1")
    assert keys.count(key("spyke_plasma_v1")) == 1
    for trait in SHEET.locked:
        assert key(trait) in keys, f"{trait} was removed"
        flipped = key(mirror(trait))
        assert flipped == key(trait) or not any(set(flipped.split()) <= set(k.split()) for k in keys), \
            f"{trait} was mirrored: {result.tags}"
    assert not {"mirrored", "flipped", "bare arms"} & set(keys)
    # Nothing beyond the change set: every tag is the original's or one an applied change named.
    named = {key(c.tag) for c in change_set.changes} | {key(c.replacement) for c in change_set.changes
                                                       if c.replacement}
    assert set(keys) <= {key(t) for t in prompt} | named
    assert len(keys) == len(set(keys))


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(PROMPTS, CHANGE_SETS)
def test_every_change_is_accounted_for(prompt: list[str], change_set: ChangeSet) -> None:
    result = apply_changes(prompt, change_set, SHEET)
    assert [o.change for o in result.outcomes] == list(change_set.changes)
    for outcome in result.refused:
        assert outcome.note


def test_a_trigger_found_later_moves_first_and_a_missing_one_is_not_invented() -> None:
    moved = apply_changes(split_tags("1boy, spyke_plasma_v1, dusk"), ChangeSet(changes=[]), SHEET)
    assert moved.tags == ["spyke_plasma_v1", "1boy", "dusk"]
    missing = apply_changes(["1boy", "dusk"], ChangeSet(changes=[]), SHEET)
    assert missing.tags == ["1boy", "dusk"] and "no trigger word" in missing.warnings[0]


def test_replace_keeps_the_position_and_refusals_say_why() -> None:
    changes = ChangeSet(changes=[
        ReplaceChange(op="replace", region="lighting", tag="noon", replacement="dusk"),
        ReplaceChange(op="replace", region="appearance", tag="ginger hair", replacement="black hair"),
        AddChange(op="add", region="appearance", tag="bracer on left arm")])
    result = apply_changes(["spyke_plasma_v1", "noon", "(ginger hair:1.2)", "right bracer"], changes, SHEET)
    assert result.tags == ["spyke_plasma_v1", "dusk", "(ginger hair:1.2)", "right bracer"]
    notes = [o.note for o in result.refused]
    assert "locked trait" in notes[0] and "mirrors the locked trait 'right bracer'" in notes[1]
