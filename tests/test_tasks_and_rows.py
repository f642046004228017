"""Task registry and verl-schema rows."""
import pytest

from deepretrieval.catalog import read_rows
from deepretrieval.data.rows import write_parquet
from deepretrieval.catalog import get_task, list_tasks


def test_registry_has_scifact_variants():
    assert {"scifact", "scifact_no_reason"} <= set(list_tasks())
    task = get_task("scifact")
    assert task.answer_key == "query" and task.reasoning and task.train_depth == 1000 and task.val_depth == 10
    assert not get_task("scifact_no_reason").reasoning


def test_messages_are_chat_messages_without_special_tokens():
    messages = get_task("scifact").messages(query="Vitamin D prevents cancer.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Vitamin D prevents cancer." in messages[1]["content"]
    assert "<think>" in messages[0]["content"] and "<answer>" in messages[0]["content"]
    assert not any("<|im_start|>" in m["content"] for m in messages)
    answer_only = get_task("scifact_no_reason").messages(query="x")
    assert "<think>" not in answer_only[0]["content"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        get_task("definitely_unknown")
    assert "scifact" in str(info.value) and "spider" in str(info.value)


def test_rows_round_trip_through_parquet(tmp_path):
    from deepretrieval.catalog import bundled_rows
    rows = bundled_rows("scifact", "test")
    assert len(rows) == 300
    path = write_parquet(rows, tmp_path / "test.parquet")
    back = read_rows(path)
    assert back == rows
    row = back[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["reward_model"]["style"] == "rule"
    assert row["extra_info"]["split"] == "test" and row["extra_info"]["index"] == 0
    assert len(row["reward_model"]["ground_truth"]["target"]) == len(row["reward_model"]["ground_truth"]["grades"])


def test_write_parquet_is_atomic(tmp_path):
    target = tmp_path / "rows.parquet"
    with pytest.raises(ValueError):  # pyarrow.ArrowInvalid: the value is not storable
        write_parquet([{"a": 1}, {"a": object()}], target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no rows"):
        write_parquet([], target)
