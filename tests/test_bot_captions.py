"""Reading captions as edits (pure functions, no Telegram)."""

from __future__ import annotations

import pytest

from bots.captions import CaptionError, Plan, parse, split_command

LOCAL = {"adjust", "stylization_all", "super_resolution", "remove_watermark", "lineart"}
CLOUD = LOCAL | {"edit", "expand", "colorization"}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("/style oil painting", Plan("stylization_all", "oil painting")),
        ("/adjust rotate 90; grayscale", Plan("adjust", "rotate 90; grayscale")),
        ("/upscale 4", Plan("super_resolution", upscale_factor=4)),
        (
            "/upscale x2 lanczos",
            Plan("super_resolution", upscale_factor=2, options={"method": "lanczos"}),
        ),
        (
            "/upscale 3 method=cubic",
            Plan("super_resolution", upscale_factor=3, options={"method": "cubic"}),
        ),
        ("/lineart canny", Plan("lineart", options={"method": "canny"})),
        ("/erase", Plan("remove_watermark")),
        (
            "/expand 1.5",
            Plan("expand", expand=dict.fromkeys(("top", "bottom", "left", "right"), 1.5)),
        ),
        (
            "/expand left 2 right 1.25 a sandy beach",
            Plan(
                "expand",
                "a sandy beach",
                expand={"top": 1.0, "bottom": 1.0, "left": 2.0, "right": 1.25},
            ),
        ),
        ("/edit@retouch_test_bot put a hat on the cat", Plan("edit", "put a hat on the cat")),
        ("  make it   snowy ", Plan("edit", "make it   snowy")),
    ],
)
def test_commands_and_words(caption: str, expected: Plan) -> None:
    assert parse(caption, CLOUD, "retouch_test_bot") == expected


@pytest.mark.parametrize(
    ("words", "function", "shown"),
    [
        ("oil painting", "stylization_all", "/style oil painting"),
        ("make it a watercolour", "stylization_all", "/style make it a watercolour"),
        ("rotate 90", "adjust", "/adjust rotate 90"),
        ("upscale it 4x please", "super_resolution", "/upscale 4"),
        ("line art", "lineart", "/lineart"),
        ("remove the watermark", "remove_watermark", "/erase"),
    ],
)
def test_plain_words_map_to_local_functions_explicitly(
    words: str, function: str, shown: str
) -> None:
    plan = parse(words, LOCAL)
    assert plan is not None and plan.function == function
    assert plan.chosen is not None and shown in plan.chosen and "cloud vendor" in plan.chosen


@pytest.mark.parametrize(
    ("caption", "fragment"),
    [
        ("/style", "/style needs words"),
        ("/upscale 8", "from 1 to 4"),
        ("/expand 3", "from 1.0 to 2.0"),
        ("/expand 1.2 1.3", "four for top"),
        ("/frobnicate now", "not an edit command"),
        ("put the cat on the sofa", "none is enabled"),
    ],
)
def test_unreadable_captions_explain_what_works(caption: str, fragment: str) -> None:
    with pytest.raises(CaptionError, match=fragment):
        parse(caption, LOCAL)


def test_nothing_to_do() -> None:
    assert parse(None, LOCAL) is None
    assert parse("   ", LOCAL) is None
    assert parse("/style@other_bot oil", LOCAL, "retouch_test_bot") is None


def test_describe_round_trips() -> None:
    for caption in ["/upscale 4 lanczos", "/style oil painting", "/expand 1.5", "/lineart canny"]:
        plan = parse(caption, CLOUD)
        assert plan is not None and plan.describe() == caption
        assert parse(plan.describe(), CLOUD) == plan


def test_split_command() -> None:
    assert split_command("/style@bot oil paint") == ("style", "bot", "oil paint")
    assert split_command("/help") == ("help", None, "")
    assert split_command("hello /style") is None
