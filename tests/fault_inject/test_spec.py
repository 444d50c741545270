"""The fault spec grammar (fault_inject.spec): parsing, errors with columns, resolving."""

from __future__ import annotations

import pytest

import fault_inject as fi
from fault_inject import spec as S


def parse1(text: str) -> S.Entry:
    (entry,) = S.parse(text).entries
    return entry


# ---- what parses, and to what ------------------------------------------------------


def test_design_examples() -> None:
    e = parse1("alloc=2*off->oom")
    assert e.point == "alloc"
    assert e.terms == (S.Term("off", count=2), S.Term("oom"))
    e = parse1("alloc=2*off->1*oom->off")
    assert [(t.action, t.count) for t in e.terms] == [("off", 2), ("oom", 1), ("off", None)]
    e = parse1("eval.fill=25%fail")
    assert e.terms == (S.Term("fail", percent=25.0),)


def test_every_action_and_argument() -> None:
    spec = S.parse("a=off;b=fail;c=fail(-4);d=oom;e=delay(50);f=hang;g=missing;h=nan;i=grow;j=grow(3);k=crash;l=fail(inference)")
    got = {e.point: (e.terms[0].action, e.terms[0].arg) for e in spec.entries}
    assert got == {
        "a": ("off", None),
        "b": ("fail", None),
        "c": ("fail", -4),
        "d": ("oom", None),
        "e": ("delay", 50),
        "f": ("hang", None),
        "g": ("missing", None),
        "h": ("nan", None),
        "i": ("grow", None),
        "j": ("grow", 3),
        "k": ("crash", None),
        "l": ("fail", "inference"),
    }


def test_probability_and_count_together() -> None:
    (t,) = parse1("eval.step=12.5%3*fail(-4)").terms
    assert (t.percent, t.count, t.action, t.arg) == (12.5, 3, "fail", -4)


def test_wildcards() -> None:
    assert parse1("session.*=fail").wildcard
    assert parse1("*=off").point == "*"
    assert not parse1("alloc=oom").wildcard


def test_blanks_and_trailing_semicolon_are_accepted() -> None:
    spec = S.parse("  alloc = 2 * off -> oom ; eval.step = delay( 5 ) ; ")
    assert str(spec) == "alloc=2*off->oom;eval.step=delay(5)"


@pytest.mark.parametrize(
    "text",
    ["alloc=2*off->oom", "eval.fill=25%fail", "a=10%3*fail(-4)->1*delay(5)->off", "session.*=hang", "x=grow(2)"],
)
def test_canonical_text_round_trips(text: str) -> None:
    spec = S.parse(text)
    assert str(spec) == text
    assert S.parse(str(spec)) == spec


# ---- malformed specs: column and what was expected -----------------------------------


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "the spec is empty"),
        ("=oom", 1, "fault point name"),
        ("alloc", 6, "'='"),
        ("alloc=", 7, "an action"),
        ("alloc=2*fial", 9, "unknown action 'fial' (did you mean 'fail'?)"),
        ("alloc=oom->off", 12, "can never be reached"),
        ("alloc=0%fail", 7, "0% never fires"),
        ("alloc=150%fail", 7, "at most 100"),
        ("alloc=0*oom", 7, "0* never fires"),
        ("alloc=1.5*oom", 7, "not a whole number"),
        ("alloc=3oom", 8, "'%' (a probability) or '*' (a count)"),
        ("alloc=oom(3)", 10, "'oom' takes no argument"),
        ("alloc=delay", 12, "'delay' needs an argument"),
        ("alloc=delay(x)", 13, "a whole number"),
        ("alloc=fail(0)", 12, "not an error code"),
        ("alloc=fail(3)", 12, "not an error code"),
        ("alloc=grow(0)", 12, "at least 1"),
        ("alloc=fail(-4", 14, "')'"),
        ("alloc=oom eval.step=fail", 11, "';' and another entry"),
        ("alloc=oom;;", 11, "fault point name"),
    ],
)
def test_malformed_specs_name_column_and_expectation(text: str, column: int, fragment: str) -> None:
    with pytest.raises(S.FaultSpecError) as info:
        S.parse(text)
    err = info.value
    assert err.column == column, str(err)
    assert fragment in str(err)
    # the message shows the spec with a caret under the column
    lines = str(err).splitlines()
    assert lines[1].strip() == text.strip() or not text.strip()
    assert lines[2].index("^") - 4 == column - 1


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("alloc=99999999999*oom", 7, "count 99999999999 is out of range; expected 1..4294967295"),
        ("alloc=delay(99999999)", 13, "0..3600000 ms"),
        ("alloc=grow(2000000)", 12, "1..1048576"),
        ("alloc=" + "->".join(["1*off"] * 17), 119, "17 terms in one chain; expected at most 16"),
        ("x" * 128 + "=off", 1, "expected at most 127"),
    ],
)
def test_the_engines_limits_are_checked_against_the_library(text: str, column: int, fragment: str) -> None:
    # parse() checks the grammar only; the limits are the native engine's
    # (bitnet_fault.h), read from the library by validate()
    S.parse(text)
    with pytest.raises(S.FaultSpecError) as info:
        fi.validate(text)
    assert info.value.column == column, str(info.value)
    assert fragment in str(info.value)


def test_source_is_named() -> None:
    with pytest.raises(S.FaultSpecError, match="invalid fault spec from BITNET_INJECT at column 7"):
        S.parse("alloc=bogus", source="BITNET_INJECT")


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="a fault spec is a str"):
        S.parse(42)  # type: ignore[arg-type]


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(S.FaultSpecError, ValueError)


# ---- resolving against the real registry -------------------------------------------


def resolve(text: str) -> tuple[S.CompiledEntry, ...]:
    return fi.validate(text).entries


def test_unknown_point_lists_closest_names() -> None:
    with pytest.raises(S.FaultSpecError) as info:
        resolve("tokenize.fil=fail")
    msg = str(info.value)
    assert "unknown fault point 'tokenize.fil'" in msg
    assert "'tokenize.fill'" in msg and "'detokenize.fill'" in msg
    assert info.value.column == 1


def test_unknown_point_in_second_entry_points_at_it() -> None:
    with pytest.raises(S.FaultSpecError) as info:
        resolve("alloc=oom;eval.stpe=fail")
    assert info.value.column == 11
    assert "'eval.step'" in str(info.value)


def test_wildcard_matching_nothing_suggests_a_prefix() -> None:
    with pytest.raises(S.FaultSpecError, match="no registered fault point matches 'sesion.\\*'.*'session.\\*'"):
        resolve("sesion.*=fail")


def test_wildcard_expands_to_registered_points() -> None:
    (ce,) = resolve("session.*=fail")
    assert set(ce.points) == {"session.create", "session.free", "session.tokenize", "session.eval"}
    (ce,) = resolve("dlsym.*=missing")
    assert "dlsym.bitnet_cpp_init_context" in ce.points and len(ce.points) >= 15


def test_wildcard_arms_only_the_points_that_perform_its_actions() -> None:
    # `*=hang` hangs every point that can hang; `alloc` cannot (an
    # allocation has no deadline to wait for) and is left out, not refused.
    (ce,) = resolve("*=hang")
    assert "alloc" not in ce.points and "alloc" in ce.skipped
    assert set(ce.points) | set(ce.skipped) == {p.name for p in fi.points()}
    assert {"tokenize.fill", "session.eval", "dlopen"} <= set(ce.points)
    # every action of the chain counts: `grow` is performed by the fill passes only
    (ce,) = resolve("*=1*grow->fail")
    assert {"tokenize.fill", "detokenize.fill", "eval.fill"} <= set(ce.points)
    assert not {"alloc", "tokenize.query", "dlopen"} & set(ce.points)
    # a point skipped by one pattern may be armed by another entry
    ce1, ce2 = resolve("*=hang;alloc=oom")
    assert "alloc" not in ce1.points and ce2.points == ("alloc",)


def test_wildcard_whose_points_cannot_perform_the_action_is_refused() -> None:
    with pytest.raises(S.FaultSpecError) as info:
        resolve("dlsym.*=grow")
    assert "none of the" in str(info.value) and "matched by 'dlsym.*' performs 'grow'" in str(info.value)
    assert info.value.column == 1
    # naming the point stays an error about that point
    with pytest.raises(S.FaultSpecError, match="'alloc' does not support 'hang'"):
        resolve("alloc=hang")


def test_point_armed_twice_in_one_spec() -> None:
    with pytest.raises(S.FaultSpecError, match="point 'session.eval' is armed twice"):
        resolve("session.*=fail;session.eval=off")
    with pytest.raises(S.FaultSpecError, match="armed twice"):
        resolve("alloc=oom;alloc=off")


def test_action_a_point_does_not_perform_is_refused() -> None:
    with pytest.raises(S.FaultSpecError) as info:
        resolve("tokenize.fill=nan")
    assert "point 'tokenize.fill' does not support 'nan'" in str(info.value)
    assert "grow" in str(info.value)  # lists what it does support
    assert info.value.column == 15
    with pytest.raises(S.FaultSpecError, match="'alloc' does not support 'hang'"):
        resolve("alloc=hang")


def test_code_names_resolve_to_numbers() -> None:
    codes = fi.error_codes()
    for text in ("x=fail(inference)", "x=fail(INFERENCE)", "x=fail(BITNET_E_INFERENCE)", "x=fail(-4)"):
        (ce,) = resolve(text.replace("x=", "eval.step="))
        assert ce.terms[0][3] == codes["BITNET_E_INFERENCE"] == -4


def test_unknown_code_is_refused_with_choices() -> None:
    with pytest.raises(S.FaultSpecError, match="fail\\(inferance\\): unknown error code name \\(did you mean 'inference'"):
        resolve("eval.step=fail(inferance)")
    with pytest.raises(S.FaultSpecError, match="fail\\(-99\\): no such error code") as info:
        resolve("eval.step=fail(-99)")
    assert info.value.column == 16


def test_compiled_form() -> None:
    (ce,) = resolve("eval.step=25%2*fail(-10)->delay(5)")
    assert ce.pattern == "eval.step" and ce.points == ("eval.step",)
    assert ce.terms == ((0.25, 2, S.ACTIONS.index("fail"), -10), (1.0, 0, S.ACTIONS.index("delay"), 5))
