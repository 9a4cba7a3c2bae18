"""Text classification data: local files in each format, vocabulary, encoding, errors."""

from __future__ import annotations

import pytest
import torch

from plmu.data.text_classification import (
    PAD_ID,
    TASKS,
    DataNotFoundError,
    TextClassificationData,
    collate,
    load_splits,
)
from text_fixtures import pair_rows, sentiment_rows, write_rows

CONFIG = {
    "batch_size": 4,
    "seed": 0,
    "max_length": 8,
    "vocab_size": 100,
    "min_frequency": 1,
    "truncation_side": "right",
    "val_fraction": 0.25,
    "num_workers": 0,
}


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("names", [False, True])
def test_local_sentiment_files_load_in_every_format(tmp_path, fmt, names):
    write_rows(tmp_path / f"train{fmt}", sentiment_rows(16, labels_as_names=names))
    write_rows(tmp_path / f"test{fmt}", sentiment_rows(6, labels_as_names=names))
    splits = load_splits(TASKS["imdb"], tmp_path, val_fraction=0.25, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [12, 4, 6]
    assert splits["test"].labels == [1, 0, 1, 0, 1, 0]
    assert splits["test"].texts[0] == ("a great film number 0",)


@pytest.mark.parametrize(
    ("task", "names"),
    [
        ("qqp", None),
        ("qqp", ["not_duplicate", "duplicate"]),
        ("snli", None),
        ("snli", ["entailment", "neutral", "contradiction"]),
    ],
)
def test_local_pair_files_load(tmp_path, task, names):
    spec = TASKS[task]
    write_rows(tmp_path / "train.csv", pair_rows(9, spec.columns, spec.num_classes, names))
    write_rows(tmp_path / "validation.parquet", pair_rows(3, spec.columns, spec.num_classes, names))
    write_rows(tmp_path / "test.jsonl", pair_rows(4, spec.columns, spec.num_classes, names))
    splits = load_splits(spec, tmp_path, val_fraction=0.5, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 4]  # no carving
    assert splits["test"].labels == [i % spec.num_classes for i in range(4)]
    assert len(splits["train"].texts[0]) == 2


def test_validation_is_carved_from_train_reproducibly_and_disjointly(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(40))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(4))
    first = load_splits(TASKS["imdb"], tmp_path, 0.2, seed=3)
    again = load_splits(TASKS["imdb"], tmp_path, 0.2, seed=3)
    other = load_splits(TASKS["imdb"], tmp_path, 0.2, seed=4)
    assert first["validation"].texts == again["validation"].texts
    assert first["validation"].texts != other["validation"].texts
    assert len(first["validation"]) == 8 and len(first["train"]) == 32
    assert not set(first["validation"].texts) & set(first["train"].texts)


def test_datamodule_batches_are_padded_with_lengths(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(16))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(4))
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    data.setup("fit")
    ids, lengths, labels = next(iter(data.test_dataloader()))
    assert ids.shape == (4, int(lengths.max())) and ids.dtype == torch.long
    # "a great film number 0", "a bad film number 1", "wonderful acting and a great story ..."
    assert lengths.tolist() == [5, 5, 8, 5]
    assert labels.tolist() == [1, 0, 1, 0]
    assert (ids[0, 5:] == PAD_ID).all() and (ids[0, :5] != PAD_ID).all()


def test_vocabulary_is_built_on_train_only_and_restored_from_saved_state(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(8))
    write_rows(tmp_path / "test.jsonl", [{"text": "zebra quantum", "label": 1}])
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    data.setup("fit")
    unk = data.tokenizer.token_to_id("[UNK]")
    assert data.sets["test"].ids[0][0].tolist() == [unk, unk]  # test words are not in the vocab
    restored = TextClassificationData(TASKS["imdb"], CONFIG, None, saved=data.saved_state())
    assert restored.sets == {}  # nothing read
    text = "A GREAT film<br />number 3"
    assert restored.encode(text)[0].tolist() == data.encode(text)[0].tolist()
    assert data.tokenizer.decode(data.encode(text)[0][0].tolist()) == "a great film number 3"


def test_long_texts_are_truncated_in_splits_but_refused_by_encode(tmp_path):
    long = "a great film " * 5  # 15 tokens > max_length 8
    write_rows(tmp_path / "train.jsonl", [*sentiment_rows(8), {"text": long, "label": 1}])
    write_rows(tmp_path / "test.jsonl", [{"text": long, "label": 1}])
    right = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    right.setup()
    left = TextClassificationData(TASKS["imdb"], {**CONFIG, "truncation_side": "left"}, tmp_path)
    left.setup()
    first, last = "a great film a great film a great", "great film a great film a great film"
    assert right.sets["test"].ids[0][0].tolist() == right.encode(first)[0][0].tolist()
    assert left.sets["test"].ids[0][0].tolist() == left.encode(last)[0][0].tolist()
    with pytest.raises(ValueError, match="15 tokens, more than max_length=8"):
        right.encode(long)


def test_encode_rejects_empty_texts_and_wrong_arity(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(8))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    data.setup()
    for empty in ["", "   ", "<br />"]:
        with pytest.raises(ValueError, match="text is empty"):
            data.encode(empty)
    with pytest.raises(ValueError, match="imdb expects 1 text"):
        data.encode("good", "bad")
    with pytest.raises(TypeError, match="text must be a str"):
        data.encode(3)


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_missing_column_names_the_file_and_column(tmp_path, fmt):
    rows = [{"question1": "a b", "label": 0}, {"question1": "c d", "label": 1}]
    path = write_rows(tmp_path / f"train{fmt}", rows)
    write_rows(tmp_path / f"test{fmt}", rows)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question2'\]") as error:
        load_splits(TASKS["qqp"], tmp_path, 0.5, 0)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("label", "fmt"), [("positive", ".jsonl"), (2, ".jsonl"), ("7", ".csv")])
def test_unknown_labels_are_an_error(tmp_path, label, fmt):
    rows = [*sentiment_rows(3), {"text": "fine", "label": label}]
    write_rows(tmp_path / f"train{fmt}", rows)
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match=r"row 3: column 'label': unknown label .*'neg', 'pos'"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_texts_in_files_are_an_error(tmp_path, text):
    write_rows(tmp_path / "train.csv", [*sentiment_rows(2), {"text": text, "label": 1}])
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError, match="row 2: column 'text' must be a non-empty text"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


def test_text_of_markup_only_is_an_error_when_encoding(tmp_path):
    write_rows(tmp_path / "train.jsonl", [*sentiment_rows(4), {"text": "<br /><br />", "label": 1}])
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    with pytest.raises(ValueError, match="row 4: column 'text' has no words"):
        data.setup()


def test_missing_files_say_which_files_to_put_where(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(4))
    with pytest.raises(DataNotFoundError, match=r"has no test file: put test.jsonl, test.csv"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    with pytest.raises(DataNotFoundError, match="not a directory"):
        load_splits(TASKS["imdb"], tmp_path / "nowhere", 0.5, 0)


def test_offline_hub_gives_one_line_with_what_to_do(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-plmu-test-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", "/nonexistent-plmu-test-cache")
    with pytest.raises(DataNotFoundError) as error:
        load_splits(TASKS["snli"], None, 0.1, 0)
    message = str(error.value)
    assert "\n" not in message
    assert "stanfordnlp/snli" in message
    assert "['premise', 'hypothesis', 'label']" in message and "--data-dir" in message


def test_collate_pairs():
    batch = [
        (torch.tensor([5, 6]), torch.tensor([7]), 1),
        (torch.tensor([5]), torch.tensor([7, 8, 9]), 0),
    ]
    ids_a, len_a, ids_b, len_b, labels = collate(batch)
    assert ids_a.tolist() == [[5, 6], [5, 0]] and len_a.tolist() == [2, 1]
    assert ids_b.tolist() == [[7, 0, 0], [7, 8, 9]] and len_b.tolist() == [1, 3]
    assert labels.tolist() == [1, 0]


def test_hub_splits_are_mapped_and_unlabelled_pairs_dropped(monkeypatch):
    """The hub path without a network: ``load_dataset`` answers with a small in-memory set."""
    import datasets

    def fake_load_dataset(path, name=None):
        assert (path, name) == ("stanfordnlp/snli", None)
        part = datasets.Dataset.from_dict(
            {
                "premise": ["a man sleeps", "a dog runs", "two kids play", "rain falls"],
                "hypothesis": ["a man is awake", "an animal moves", "", "it is wet"],
                "label": [2, 0, 1, -1],
            }
        )
        return datasets.DatasetDict({"train": part, "validation": part, "test": part})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(TASKS["snli"], None, 0.1, 0)
    for split in ("train", "validation", "test"):  # -1 (no gold label) and the empty text dropped
        assert splits[split].labels == [2, 0]
        assert splits[split].texts == [
            ("a man sleeps", "a man is awake"),
            ("a dog runs", "an animal moves"),
        ]


def test_qqp_tests_on_glue_validation_and_holds_out_part_of_train(monkeypatch):
    import datasets

    def fake_load_dataset(path, name=None):
        assert (path, name) == ("nyu-mll/glue", "qqp")

        def part(prefix, n, label):
            return datasets.Dataset.from_dict(
                {
                    "question1": [f"{prefix} one {i}" for i in range(n)],
                    "question2": [f"{prefix} two {i}" for i in range(n)],
                    "label": [label] * n,
                    "idx": list(range(n)),
                }
            )

        return datasets.DatasetDict(
            {
                "train": part("train", 20, 1),
                "validation": part("val", 5, 0),
                "test": part("t", 3, -1),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(TASKS["qqp"], None, 0.25, 0)
    assert len(splits["train"]) == 15 and len(splits["validation"]) == 5
    assert (
        splits["test"].texts[0] == ("val one 0", "val two 0") and splits["test"].labels == [0] * 5
    )


@pytest.mark.parametrize("fmt", [".parquet", ".jsonl"])
def test_local_snli_exported_from_the_hub_drops_pairs_without_gold_label(tmp_path, fmt):
    """SNLI saved from the hub (``to_parquet``/``to_json``) marks pairs without a gold label
    with -1; like the hub route, they are dropped, not an 'unknown label' error."""
    import datasets

    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(TASKS["snli"].label_names)),
        }
    )
    part = datasets.Dataset.from_dict(
        {
            "premise": ["a man sleeps", "a dog runs", "two kids play", "rain falls"],
            "hypothesis": ["a man is awake", "an animal moves", "kids are outside", "it is wet"],
            "label": [2, -1, 1, 0],
        },
        features=features,
    )
    for split in ("train", "test"):
        path = tmp_path / f"{split}{fmt}"
        if fmt == ".parquet":
            part.to_parquet(str(path))
        else:
            part.to_json(str(path), lines=True)
    splits = load_splits(TASKS["snli"], tmp_path, 0.34, 0)
    assert splits["test"].labels == [2, 1, 0]
    assert splits["test"].texts[1] == ("two kids play", "kids are outside")
    assert splits["test"].rows == [0, 2, 3]  # error messages keep the file's row numbers
    assert len(splits["train"]) + len(splits["validation"]) == 3


def test_local_snli_gold_label_dash_is_dropped_and_other_labels_still_checked(tmp_path):
    """The original SNLI files write '-' for no consensus; -2 is still an unknown label."""
    rows = pair_rows(4, TASKS["snli"].columns, 3, ["entailment", "neutral", "contradiction"])
    write_rows(tmp_path / "train.csv", [*rows, {**rows[0], "label": "-"}])
    write_rows(tmp_path / "test.csv", [{**rows[1], "label": "-1"}, rows[2]])
    splits = load_splits(TASKS["snli"], tmp_path, 0.25, 0)
    assert splits["test"].labels == [2] and len(splits["train"]) == 3
    write_rows(tmp_path / "test.csv", [{**rows[1], "label": "-2"}, rows[2]])
    with pytest.raises(ValueError, match=r"row 0: column 'label': unknown label '-2'"):
        load_splits(TASKS["snli"], tmp_path, 0.25, 0)
