import pytest

from tools import catalog
from tools.errors import InvalidParameter, UnknownFunction
from tools.models import EditRequest, Expand


def req(**kw: object) -> EditRequest:
    kw.setdefault("images", ["https://example.com/a.png"])
    return EditRequest(**kw)  # type: ignore[arg-type]


def test_every_design_function_is_catalogued() -> None:
    wanted = {
        "edit",
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "remove_watermark",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "control_cartoon_feature",
        "adjust",
        "lineart",
    }
    assert wanted <= set(catalog.FUNCTIONS)


def test_unknown_function_lists_known_ones() -> None:
    with pytest.raises(UnknownFunction, match="known functions: edit"):
        catalog.validate(req(function="teleport", prompt="x"))


def test_image_count_and_mask_and_prompt() -> None:
    with pytest.raises(InvalidParameter, match="1 to 3 images; got 4"):
        catalog.validate(req(images=["a"] * 4, prompt="x"))
    with pytest.raises(InvalidParameter, match="exactly 1 image; got 2"):
        catalog.validate(req(images=["a", "b"], function="stylization_all", prompt="oil"))
    with pytest.raises(InvalidParameter, match="needs a mask"):
        catalog.validate(req(function="description_edit_with_mask", prompt="x"))
    with pytest.raises(InvalidParameter, match="needs a prompt"):
        catalog.validate(req(function="stylization_all"))
    catalog.validate(req(function="super_resolution", upscale_factor=2))


def test_parameters_that_do_not_belong() -> None:
    with pytest.raises(InvalidParameter, match="does not use upscale_factor"):
        catalog.validate(req(function="stylization_all", prompt="oil", upscale_factor=2))
    with pytest.raises(InvalidParameter, match="expand needs the expand scales"):
        catalog.validate(req(function="expand"))
    catalog.validate(req(function="expand", expand=Expand(left=1.5)))


def test_model_level_validation_messages() -> None:
    with pytest.raises(ValueError, match="size must look like"):
        req(size="big")
    with pytest.raises(ValueError):
        req(n=0)
    with pytest.raises(ValueError):
        req(expand={"left": 3})
    assert req(size="1024*768").size == "1024x768"


def test_parameter_schema_is_cut_to_the_function() -> None:
    schema = catalog.parameter_schema(catalog.get("super_resolution"))
    assert "upscale_factor" in schema["properties"]
    assert "expand" not in schema["properties"]
    assert schema["properties"]["images"]["maxItems"] == 1
