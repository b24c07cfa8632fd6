"""The settings are documented once, at the source: every field has a docstring and a group, and
the tables in docs/settings.md and README.md are the generator's output, never edited by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import settings_doc
from gateway.settings import GROUPS, GatewaySettings

FIELDS = GatewaySettings.model_fields


@pytest.mark.parametrize("path", [settings_doc.DOC, settings_doc.README], ids=lambda p: p.name)
def test_the_settings_tables_are_what_the_settings_make(path: Path) -> None:
    text = path.read_text()
    block = settings_doc.targets()[path]
    assert text == settings_doc.with_block(text, block, path), (
        f"{path.relative_to(settings_doc.ROOT)} is stale: run "
        "`python -m gateway.settings_doc --write` (or `make settings-doc`)"
    )


def test_every_setting_says_what_it_is() -> None:
    undocumented = [name for name, field in FIELDS.items() if not (field.description or "").strip()]
    assert not undocumented, f"add a docstring under each of {undocumented} in gateway/settings.py"


def test_every_setting_is_in_exactly_one_group_in_the_order_of_the_class() -> None:
    grouped = [name for group in GROUPS.values() for name in group.fields]
    assert sorted(grouped) == sorted(set(grouped)), "a setting is in two groups"
    assert set(grouped) == set(FIELDS), (
        f"not in GROUPS: {sorted(set(FIELDS) - set(grouped))}; "
        f"not settings: {sorted(set(grouped) - set(FIELDS))}"
    )
    assert grouped == list(FIELDS), "order the fields of GatewaySettings as GROUPS lists them"


def test_a_block_is_replaced_between_its_markers_only() -> None:
    text = f"intro\n{settings_doc.BEGIN}\nold table\n{settings_doc.END}\noutro\n"
    new = settings_doc.with_block(text, "new table", Path("x.md"))
    assert new == f"intro\n{settings_doc.BEGIN}\nnew table\n{settings_doc.END}\noutro\n"
    with pytest.raises(ValueError, match=r"x\.md: no <!-- settings:begin -->"):
        settings_doc.with_block("no markers here\n", "new table", Path("x.md"))


def test_defaults_read_as_they_are_set() -> None:
    assert settings_doc.default(FIELDS["tracking_uri"]).startswith("`$MLFLOW_TRACKING_URI`")
    assert settings_doc.default(FIELDS["api_key"]) == "unset"
    assert settings_doc.default(FIELDS["bf16"]) == "`false`"
    assert settings_doc.default(FIELDS["retrain_args"]) == "empty"
    assert settings_doc.default(FIELDS["max_body_bytes"]) == "`2097152` (2 MiB)"


def test_a_description_is_one_line_naming_other_settings_by_their_variables() -> None:
    row = settings_doc.description("state_dir")
    assert "\n" not in row
    assert "`GATEWAY_STORE_URL`" in row
