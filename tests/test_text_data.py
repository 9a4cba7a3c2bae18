"""Text classification data: local files in each format, vocabulary, encoding, errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from plmu.data import DataError
from plmu.data.text_classification import (
    PAD_ID,
    TextClassificationData,
    build_tokenizer,
    collate,
)
from plmu.data.text_files import DataNotFoundError
from plmu.data.text_layouts import read_hub_files
from plmu.data.text_splits import load_splits
from plmu.data.text_tasks import TASKS
from text_fixtures import (
    pair_rows,
    qqp_lines,
    sentiment_rows,
    snli_line,
    write_aclimdb,
    write_glue_qqp,
    write_rows,
    write_snli,
)

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


@pytest.mark.parametrize("fmt", [".jsonl", ".csv"])
def test_local_files_saved_with_a_byte_order_mark_load(tmp_path, fmt):
    """Windows tools (Notepad, Excel's "CSV UTF-8") start UTF-8 files with a BOM."""
    for split, n in (("train", 8), ("test", 4)):
        path = write_rows(tmp_path / f"{split}{fmt}", sentiment_rows(n))
        path.write_bytes("\ufeff".encode() + path.read_bytes())
    splits = load_splits(TASKS["imdb"], tmp_path, val_fraction=0.25, seed=0)
    assert splits["test"].labels == [1, 0, 1, 0]
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


@pytest.mark.parametrize("stem", ["validation", "valid", "val", "dev"])
def test_a_validation_file_may_be_named_valid_val_or_dev(tmp_path, stem):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(10))
    write_rows(tmp_path / f"{stem}.csv", sentiment_rows(3))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(4))
    splits = load_splits(TASKS["imdb"], tmp_path, val_fraction=0.5, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [10, 3, 4]
    other = "dev" if stem == "validation" else "validation"
    write_rows(tmp_path / f"{other}.jsonl", sentiment_rows(3))
    with pytest.raises(ValueError, match="several validation files") as error:
        load_splits(TASKS["imdb"], tmp_path, val_fraction=0.5, seed=0)
    assert f"{stem}.csv" in str(error.value) and f"{other}.jsonl" in str(error.value)


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


@pytest.mark.parametrize(
    ("text", "words"),
    [
        # HTML tags go, as IMDB's <br /> tags must
        ("Great<br /><br />film <i>really</i> <BR/><hr>", "great film really"),
        ('see <a href="x.html">this</a> <font color=red>now</font>', "see this now"),
        # a bare < or > is text: a tag never spans from it to the next tag's >
        ("10/10 <3 loved it.<br />The cast", "10 / 10 < 3 loved it . the cast"),
        ("Is x < 5 and y > 3 possible?", "is x < 5 and y > 3 possible ?"),
        ("Why is x<y and y>z here?", "why is x < y and y > z here ?"),
    ],
)
def test_tokenizer_drops_html_tags_but_no_text_between_angle_brackets(text, words):
    tokenizer = build_tokenizer(["x"], vocab_size=10, min_frequency=1)
    normal = tokenizer.normalizer.normalize_str(text)
    assert " ".join(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normal)) == words


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


@pytest.mark.parametrize("key", ["label", "question2"])
def test_a_jsonl_row_missing_a_field_names_the_file_row_and_field(tmp_path, key):
    """A key absent from one JSON line only read as "unknown label nan" (or "got nan")."""
    rows = pair_rows(3, TASKS["qqp"].columns, 2)
    del rows[1][key]
    path = write_rows(tmp_path / "train.jsonl", rows)
    write_rows(tmp_path / "test.jsonl", pair_rows(2, TASKS["qqp"].columns, 2))
    with pytest.raises(ValueError, match=rf"row 1: missing field\(s\) \['{key}'\]") as error:
        load_splits(TASKS["qqp"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(str(path))


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_an_empty_or_null_label_says_the_label_is_missing(tmp_path, fmt):
    """JSON null, an empty CSV cell and a parquet null read as "unknown label nan" (or '')."""
    rows = [*sentiment_rows(3), {"text": "fine", "label": None}]
    if fmt == ".csv":  # not pandas' 1.0 for a column of ints and None
        rows = [
            {**row, "label": None if row["label"] is None else str(row["label"])} for row in rows
        ]
    path = write_rows(tmp_path / f"train{fmt}", rows)
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match=r"row 3: column 'label': the label is missing") as error:
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(str(path))


@pytest.mark.parametrize(("label", "fmt"), [("positive", ".jsonl"), (2, ".jsonl"), ("7", ".csv")])
def test_unknown_labels_are_an_error(tmp_path, label, fmt):
    rows = [*sentiment_rows(3), {"text": "fine", "label": label}]
    write_rows(tmp_path / f"train{fmt}", rows)
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match=r"row 3: column 'label': unknown label .*'neg', 'pos'"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


@pytest.mark.parametrize(("text", "what"), [("", "an empty text"), ("   ", "only spaces")])
def test_empty_texts_in_files_are_an_error(tmp_path, text, what):
    write_rows(tmp_path / "train.csv", [*sentiment_rows(2), {"text": text, "label": 1}])
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError, match=f"row 2: column 'text': the text is missing \\({what}"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


@pytest.mark.parametrize("fmt", [".jsonl", ".parquet"])
def test_a_null_text_says_the_text_is_missing(tmp_path, fmt):
    """A JSON null or a parquet null (pandas' NaN or None) read "must be a non-empty text, got
    nan": it is a missing text, in the file, row and column named."""
    rows = [*pair_rows(3, TASKS["qqp"].columns, 2), {"question1": "why?", "question2": None}]
    rows[3]["label"] = 0
    path = write_rows(tmp_path / f"train{fmt}", rows)
    write_rows(tmp_path / "test.jsonl", pair_rows(2, TASKS["qqp"].columns, 2))
    with pytest.raises(ValueError) as error:
        load_splits(TASKS["qqp"], tmp_path, 0.5, 0)
    assert str(error.value) == (
        f"{path}: row 3: column 'question2': the text is missing (a null value)"
    )


def test_a_text_that_is_not_a_string_names_its_type(tmp_path):
    write_rows(tmp_path / "train.jsonl", [*sentiment_rows(2), {"text": 42, "label": 1}])
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match="row 2: column 'text' must be a text, got int 42"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


def test_a_csv_row_with_too_many_fields_names_its_row_and_file_line(tmp_path):
    """pandas said "Expected 2 fields in line 5, saw 3": its "line" counts records from 1, the
    header and blank lines included, where plmu's rows count data rows from 0 and its lines
    (as in the not-UTF-8 error) the file's lines from 1. The message now gives both."""
    text = 'text,label\ngood film,1\n"a long\nreview",0\n\nbad, really bad,0\nfine,1\n'
    path = tmp_path / "train.csv"
    path.write_text(text)
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError) as error:
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(
        f"{path}: row 2 (line 6 of the file): 3 fields where the header has 2"
    )


def test_a_csv_row_with_too_few_fields_names_its_row_and_file_line(tmp_path):
    """pandas fills the fields a short row lacks with "": the row was reported as a missing
    label (or text), not as the short row it is (here an unquoted line break)."""
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood film,1\n\na long\nreview,0\nfine,1\n")
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError) as error:
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(
        f"{path}: row 1 (line 4 of the file): 1 field where the header has 2 (text, label)"
    )
    # an empty field the row does have is still the missing text (or label) it is
    path.write_text('text,label\ngood film,1\n"",0\n')
    with pytest.raises(ValueError, match="row 1: column 'text': the text is missing"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


def test_csv_rows_that_all_have_one_field_too_many_are_an_error(tmp_path):
    """pandas read the first column of such a file as its index, silently: the texts became
    the labels' column and a label column of '' or a wrong value."""
    path = tmp_path / "train.csv"
    path.write_text("text,label\nbad, really bad,0\ngreat, just great,1\n")
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError) as error:
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(
        f"{path}: row 0 (line 2 of the file): 3 fields where the header has 2"
    )


def test_a_csv_quote_never_closed_names_its_row_and_file_line(tmp_path):
    """pandas said "EOF inside string starting at row 2", counting the header as row 0."""
    path = tmp_path / "train.csv"
    path.write_text('text,label\ngood,1\n"open quote,0\nmore,1\n')
    write_rows(tmp_path / "test.csv", sentiment_rows(2))
    with pytest.raises(ValueError) as error:
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    assert str(error.value).startswith(
        f"{path}: row 1 (line 3 of the file): a double quote opened here is never closed"
    )


def test_text_of_markup_only_is_an_error_when_encoding(tmp_path):
    write_rows(tmp_path / "train.jsonl", [*sentiment_rows(4), {"text": "<br /><br />", "label": 1}])
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    with pytest.raises(ValueError, match="row 4: column 'text' has no words"):
        data.setup()


def _task_rows(task: str, n: int) -> list[dict]:
    if task == "imdb":
        return sentiment_rows(n)
    return pair_rows(n, TASKS[task].columns, TASKS[task].num_classes)


@pytest.mark.parametrize("task", ["imdb", "qqp", "snli"])
def test_training_testing_and_eval_files_are_the_splits_they_name(tmp_path, task):
    """``training.*``, ``testing.*`` and ``eval.*``/``evaluation.*`` (Hugging Face's
    ``eval_dataset``: the set evaluated during training) were ignored: the run stopped with
    "no train file", or held validation pairs out of train and never read ``eval.csv``."""
    write_rows(tmp_path / "training.csv", _task_rows(task, 12))
    write_rows(tmp_path / "testing.jsonl", _task_rows(task, 5))
    write_rows(tmp_path / "eval.parquet", _task_rows(task, 3))
    splits = load_splits(TASKS[task], tmp_path, 0.5, 0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [12, 3, 5]
    assert splits["validation"].source == str(tmp_path / "eval.parquet")
    (tmp_path / "evaluation.csv").write_bytes((tmp_path / "training.csv").read_bytes())
    with pytest.raises(ValueError, match=r"several validation files: \['eval.parquet'"):
        load_splits(TASKS[task], tmp_path, 0.5, 0)


@pytest.mark.parametrize("task", ["imdb", "qqp", "snli"])
@pytest.mark.parametrize("name", ["val.tsv", "test.json", "dev.txt", "train.csv.gz"])
def test_a_split_file_in_a_format_not_read_is_an_error(tmp_path, task, name):
    """``val.tsv`` next to ``train.csv`` and ``test.csv`` was ignored silently (validation was
    held out of train instead); ``test.json`` too, next to a ``test.csv``."""
    write_rows(tmp_path / "train.csv", _task_rows(task, 12))
    write_rows(tmp_path / "test.csv", _task_rows(task, 4))
    (tmp_path / name).write_text("anything\n")
    with pytest.raises(DataError, match=rf"{re.escape(name)} is not read: .*\.jsonl, \.csv"):
        load_splits(TASKS[task], tmp_path, 0.5, 0)


def test_missing_files_say_which_files_to_put_where(tmp_path):
    write_rows(tmp_path / "train.jsonl", sentiment_rows(4))
    with pytest.raises(DataNotFoundError, match=r"has no test file: put test.jsonl, test.csv"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    (tmp_path / "train.jsonl").unlink()
    with pytest.raises(DataNotFoundError, match=r"\['text', 'label'\], or put the aclImdb/ folder"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    with pytest.raises(DataNotFoundError, match=r"or the hub's parquet files \(qqp/train-00000-of"):
        load_splits(TASKS["qqp"], tmp_path, 0.5, 0)
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
    assert "or put the snli_1.0/ folder (snli_1.0_train.jsonl" in message


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
    assert list(load_splits(TASKS["snli"], None, 0.1, 0, test_only=True)) == ["test"]


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


# ------------------------------------------------------------------ the original distributions


@pytest.mark.parametrize("given", ["parent", "aclImdb"])
def test_aclimdb_tree_loads_with_folder_labels_and_text_as_is(tmp_path, given):
    root = write_aclimdb(
        tmp_path / "aclImdb", {"train": sentiment_rows(12), "test": sentiment_rows(4)}
    )
    data_dir = tmp_path if given == "parent" else root
    splits = load_splits(TASKS["imdb"], data_dir, val_fraction=0.25, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 4]  # no unsup
    test = splits["test"]
    assert test.labels == [0, 0, 1, 1]  # neg (0) files first, then pos (1), by file name
    assert test.rows == ["neg/1_2.txt", "neg/3_4.txt", "pos/0_8.txt", "pos/2_10.txt"]
    assert test.texts[2] == ("a<br /><br />great film number 0",)  # tags kept, as on the hub
    assert test.source == str(root / "test")
    data = TextClassificationData(TASKS["imdb"], CONFIG, data_dir)
    data.setup()
    assert data.tokenizer.decode(data.sets["test"].ids[2][0].tolist()) == "a great film number 0"


def test_aclimdb_tree_with_a_missing_folder_names_it(tmp_path):
    root = write_aclimdb(
        tmp_path / "aclImdb", {"train": sentiment_rows(4), "test": sentiment_rows(1)}
    )  # the test split has only a positive review, so no test/neg folder
    with pytest.raises(DataNotFoundError, match=r"aclImdb/test/neg is missing"):
        load_splits(TASKS["imdb"], tmp_path, 0.25, 0)
    (root / "test" / "neg").mkdir()
    (root / "test" / "neg" / "5_1.txt").write_text("<br /><br />")  # no words at all
    data = TextClassificationData(TASKS["imdb"], CONFIG, tmp_path)
    with pytest.raises(ValueError, match=r"aclImdb/test: neg/5_1.txt: column 'text' has no words"):
        data.setup()


def test_schema_files_take_precedence_over_an_original_tree(tmp_path):
    write_aclimdb(tmp_path / "aclImdb", {"train": sentiment_rows(12), "test": sentiment_rows(4)})
    write_rows(tmp_path / "train.jsonl", sentiment_rows(8))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    splits = load_splits(TASKS["imdb"], tmp_path, 0.25, 0)
    assert splits["test"].source == str(tmp_path / "test.jsonl") and len(splits["test"]) == 2


@pytest.mark.parametrize("given", ["parent", "QQP"])
def test_glue_qqp_skips_malformed_lines_and_tests_on_dev(tmp_path, caplog, given):
    train = pair_rows(12, TASKS["qqp"].columns, 2)
    train[3]["question1"] = 'What does "quoted" mean in a "TSV file?'  # quotes, one unbalanced
    lines = qqp_lines(train)
    lines[5:5] = [
        "97931\t1\t2\tWhat is a question cut by a line break",  # 5 fields: the line broke...
        '"\tWas it a real question?\t0',  # ...and its rest: 3 fields
        "97932\t3\t4\tWhy is the second question empty?\t\t0",  # an empty question
        "97933\t5\t6\ta\ttab\tinside\t1",  # 7 fields
    ]
    root = write_glue_qqp(
        tmp_path / "QQP", lines, qqp_lines(pair_rows(5, ("question1", "question2"), 2))
    )
    with caplog.at_level("WARNING"):
        splits = load_splits(TASKS["qqp"], tmp_path if given == "parent" else root, 0.25, 0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 5]
    assert splits["test"].source == str(root / "dev.tsv")  # GLUE's test.tsv has no labels
    assert splits["test"].labels == [0, 1, 0, 1, 0]
    everything = splits["train"].texts + splits["validation"].texts
    assert ('What does "quoted" mean in a "TSV file?', train[3]["question2"]) in everything
    assert not any("cut by a line break" in q or "second question" in q for q, _ in everything)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "train.tsv: skipped 4 malformed rows" in warning and "rows 5, 6, 7, 8" in warning


def test_original_files_that_are_not_utf8_are_errors_naming_the_file(tmp_path):
    """A review, a GLUE line or an SNLI line in another encoding (here Latin-1)."""
    root = write_aclimdb(
        tmp_path / "aclImdb", {"train": sentiment_rows(8), "test": sentiment_rows(4)}
    )
    (root / "train" / "pos" / "2_10.txt").write_bytes("a café<br />to love".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train: pos/2_10.txt is not UTF-8 text \(byte 0xe9 at"):
        load_splits(TASKS["imdb"], root, 0.25, 0)
    rows = qqp_lines(pair_rows(4, ("question1", "question2"), 2))
    latin = "9\t1\t2\tcafé?\tthé?\t0"
    root = write_glue_qqp(tmp_path / "QQP", [*rows[:2], latin, *rows[2:]], rows)
    text = (root / "train.tsv").read_text(encoding="utf-8")
    (root / "train.tsv").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"QQP/train.tsv: line 4 is not UTF-8 text \(byte 0xe9"):
        load_splits(TASKS["qqp"], root, 0.25, 0)
    good, bad = (
        snli_line("a man sleeps", "a man is awake", "neutral"),
        snli_line("café", "thé", "-"),
    )
    root = write_snli(tmp_path / "snli_1.0", {"train": [good, good], "dev": [good], "test": [good]})
    path = root / "snli_1.0_dev.jsonl"
    path.write_bytes(
        f"{good}\n{good}\n".encode() + bad.encode("ascii").replace(b"\\u00e9", b"\xe9")
    )
    with pytest.raises(ValueError, match=r"snli_1.0_dev.jsonl: line 3 is not UTF-8 text"):
        load_splits(TASKS["snli"], root, 0.25, 0)


def test_glue_qqp_wrong_label_or_header_is_an_error(tmp_path):
    rows = qqp_lines(pair_rows(4, ("question1", "question2"), 2))
    write_glue_qqp(tmp_path / "QQP", [*rows, "9\t1\t2\tis it?\tis it not?\tmaybe"], rows)
    with pytest.raises(
        ValueError, match=r"train.tsv: row 4: column 'label': unknown label 'maybe'"
    ):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)
    (tmp_path / "QQP" / "train.tsv").write_text("id\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question1', 'question2', 'is_"):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)
    write_glue_qqp(tmp_path / "QQP", rows, rows)
    (tmp_path / "QQP" / "dev.tsv").unlink()
    with pytest.raises(DataNotFoundError, match=r"QQP/dev.tsv is missing"):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)


@pytest.mark.parametrize("given", ["parent", "snli_1.0"])
def test_stanford_snli_maps_gold_labels_and_drops_dashes(tmp_path, given):
    root = write_snli(
        tmp_path / "snli_1.0",
        {
            "train": [
                snli_line("a man sleeps", "a man is awake", "contradiction"),
                snli_line("a dog runs", "an animal moves", "entailment"),
                snli_line("two kids play", "kids are outside", "-", ["neutral", "entailment"]),
                snli_line("rain falls", "", "neutral"),  # an empty hypothesis: dropped
                snli_line("a cat naps", "a cat is tired", "neutral"),
            ],
            "dev": [snli_line("a bird sings", "a bird is loud", "neutral")],
            "test": [
                snli_line("people swim", "people are wet", "entailment"),
                snli_line("a car stops", "a car moves", "-"),
                snli_line("a car stops", "the car is red", "neutral"),
            ],
        },
    )
    splits = load_splits(TASKS["snli"], tmp_path if given == "parent" else root, 0.5, 0)
    assert splits["train"].labels == [2, 0, 1]  # entailment 0, neutral 1, contradiction 2
    assert splits["train"].rows == [0, 1, 4]
    assert splits["validation"].texts == [("a bird sings", "a bird is loud")]  # dev, not carved
    assert splits["test"].labels == [0, 1] and splits["test"].rows == [0, 2]
    assert splits["test"].source == str(root / "snli_1.0_test.jsonl")


def test_stanford_snli_bad_lines_are_errors(tmp_path):
    good = snli_line("a man sleeps", "a man is awake", "contradiction")
    root = write_snli(tmp_path, {"train": [good], "dev": [good], "test": [good, "{not json"]})
    with pytest.raises(ValueError, match=r"snli_1.0_test.jsonl: row 1: not JSON"):
        load_splits(TASKS["snli"], root, 0.5, 0)
    write_snli(root, {"test": [good, '{"sentence1": "a", "sentence2": "b", "label": "neutral"}']})
    with pytest.raises(ValueError, match=r"row 1: missing field\(s\) \['gold_label'\]"):
        load_splits(TASKS["snli"], root, 0.5, 0)
    write_snli(root, {"test": [snli_line("a", "b", "unrelated")]})
    with pytest.raises(ValueError, match=r"row 0: column 'label': unknown label 'unrelated'"):
        load_splits(TASKS["snli"], root, 0.5, 0)


def _write_original_test_only(task: str, root):
    """``task``'s original distribution holding only its test split (GLUE QQP's is dev.tsv)."""
    if task == "imdb":
        write_aclimdb(root / "aclImdb", {"test": sentiment_rows(4)})  # train/unsup only
        return root / "aclImdb" / "test"
    if task == "qqp":
        write_glue_qqp(root / "QQP", [], qqp_lines(pair_rows(4, TASKS["qqp"].columns, 2)))
        (root / "QQP" / "train.tsv").unlink()
        return root / "QQP" / "dev.tsv"
    rows = pair_rows(4, TASKS["snli"].columns, 3, TASKS["snli"].label_names)
    lines = [snli_line(r["premise"], r["hypothesis"], r["label"]) for r in rows]
    write_snli(root / "snli_1.0", {"test": lines})
    return root / "snli_1.0" / "snli_1.0_test.jsonl"


@pytest.mark.parametrize("task", ["imdb", "qqp", "snli"])
@pytest.mark.parametrize("layout", ["files", "original"])
def test_a_saved_vocabulary_tests_on_the_test_split_alone(tmp_path, task, layout):
    """``plmu evaluate`` (``setup("test")`` with a checkpoint's vocabulary) needs only the test
    split: it read all three and refused a folder without the training file ("has no train
    file"), though the vocabulary comes from the checkpoint. Training still needs them all."""
    spec = TASKS[task]
    if layout == "files":
        rows = pair_rows(4, spec.columns, spec.num_classes) if spec.is_pair else sentiment_rows(4)
        source = write_rows(tmp_path / "test.jsonl", rows)
    else:
        source = _write_original_test_only(task, tmp_path)
    tokenizer = build_tokenizer(["a great film number what is the colour"], 100, 1)
    saved = {"tokenizer": tokenizer.to_str()}
    data = TextClassificationData(spec, CONFIG, tmp_path, saved)
    data.setup("test")
    assert len(data.test_set) == 4 and data.train_set is None and data.val_set is None
    assert load_splits(spec, tmp_path, 0.25, 0, test_only=True)["test"].source == str(source)
    loader = data.test_dataloader()
    assert sum(len(batch[-1]) for batch in loader) == 4
    data.setup("test")  # again: nothing more to read
    with pytest.raises(DataNotFoundError, match="train"):
        TextClassificationData(spec, CONFIG, tmp_path, saved).setup("fit")
    with pytest.raises(DataNotFoundError, match="train"):
        TextClassificationData(spec, CONFIG, tmp_path).setup("test")  # no vocabulary: all


def test_stanford_snli_with_a_byte_order_mark_and_crlf_loads(tmp_path):
    """A copy re-saved on Windows: a BOM before the first object, CRLF line ends, a blank line."""
    good = snli_line("a man sleeps", "a man is awake", "contradiction")
    root = write_snli(tmp_path / "snli_1.0", {"train": [good, good], "dev": [good], "test": []})
    dashed = snli_line("a car stops", "a car moves", "-")
    text = f"\ufeff{good}\r\n{dashed}\r\n\r\n{good}\r\n"
    (root / "snli_1.0_test.jsonl").write_bytes(text.encode())
    splits = load_splits(TASKS["snli"], root, 0.5, 0)
    assert splits["test"].labels == [2, 2] and splits["test"].rows == [0, 3]
    assert splits["test"].texts[0] == ("a man sleeps", "a man is awake")


def test_a_bad_jsonl_line_is_an_error_naming_the_file_and_row(tmp_path):
    lines = [json.dumps(row) for row in sentiment_rows(4)]
    lines[2] = '{"text": "a cut line", "lab'  # a line cut short (an interrupted download)
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match=r"train.jsonl: row 2: not JSON"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)
    lines[2] = '["a list", 1]'
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl: row 2: expected a JSON object"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


def test_jsonl_rows_are_the_lines_of_the_file(tmp_path):
    """Blank lines (CRLF ones too) are skipped; an error names the row of the file's line."""
    lines = [json.dumps(row) for row in sentiment_rows(3)]
    text = "\r\n".join([lines[0], "", lines[1], "", lines[2], '{"text": "", "label": 0}', ""])
    (tmp_path / "train.jsonl").write_bytes(text.encode())
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    with pytest.raises(ValueError, match=r"train.jsonl: row 5: column 'text': the text is missing"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


@pytest.mark.parametrize("fmt", [".jsonl", ".csv"])
def test_a_local_file_that_is_not_utf8_names_its_line(tmp_path, fmt):
    rows = [*sentiment_rows(2), {"text": "a café to love", "label": 1}]
    path = write_rows(tmp_path / f"train{fmt}", rows)
    text = path.read_text(encoding="utf-8").replace("\\u00e9", "é")  # JSON's escape undone
    path.write_bytes(text.encode("latin-1"))
    write_rows(tmp_path / "test.jsonl", sentiment_rows(2))
    line = 3 if fmt == ".jsonl" else 4  # the CSV's header is its line 1
    with pytest.raises(ValueError, match=rf"train{fmt}: line {line} is not UTF-8 text \(byte 0xe9"):
        load_splits(TASKS["imdb"], tmp_path, 0.5, 0)


@pytest.mark.parametrize("given", ["repository", "config folder"])
def test_the_hubs_parquet_files_load_with_the_hub_routes_splits(tmp_path, given):
    """A download of the hub repository (``huggingface-cli download nyu-mll/glue``): the
    config's folder holds ``SPLIT-00000-of-0000N.parquet`` shards; GLUE QQP's test shard is
    unlabelled (-1), so, as on the hub route, its validation split is the test split."""
    folder = tmp_path / "qqp"
    columns = TASKS["qqp"].columns
    train = pair_rows(12, columns, 2)
    write_rows(folder / "train-00000-of-00002.parquet", train[:7])
    write_rows(folder / "train-00001-of-00002.parquet", [*train[7:], {**train[0], "label": -1}])
    write_rows(folder / "validation-00000-of-00001.parquet", pair_rows(5, columns, 2))
    hidden = [{**row, "label": -1} for row in pair_rows(3, columns, 2)]
    write_rows(folder / "test-00000-of-00001.parquet", hidden)
    splits = load_splits(TASKS["qqp"], tmp_path if given == "repository" else folder, 0.25, 0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 5]
    assert splits["test"].labels == [0, 1, 0, 1, 0]
    assert sorted(splits["train"].texts + splits["validation"].texts) == sorted(
        (row["question1"], row["question2"]) for row in train
    )
    (folder / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(ValueError, match=r"qqp: train-00001-of-00002.parquet is missing"):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)


@pytest.mark.parametrize("given", ["repository", "config folder"])
@pytest.mark.parametrize(("task", "config"), [("imdb", "plain_text"), ("snli", "default")])
def test_the_hubs_parquet_export_loads_its_shards_in_order(tmp_path, given, task, config):
    """The hub's parquet export (``refs/convert/parquet``): ``CONFIG/SPLIT/0000.parquet``,
    ``0001.parquet``, ... (``plain_text`` for stanfordnlp/imdb and snli, ``default`` for a
    dataset without configs) was not read: "has no train file"."""
    folder = tmp_path / config
    train, test = _task_rows(task, 25), _task_rows(task, 6)
    for i, start in enumerate(range(0, 25, 10)):  # 0000, 0001, 0002
        write_rows(folder / "train" / f"{i:04d}.parquet", train[start : start + 10])
    write_rows(folder / "test" / "0000.parquet", test[:4])
    write_rows(folder / "test" / "0001.parquet", [*test[4:], {**test[0], "label": -1}])
    write_rows(folder / "unsupervised" / "0000.parquet", [{**train[0], "label": -1}])
    has_validation = "validation" in TASKS[task].hub_splits  # SNLI's; IMDB's is held out
    if has_validation:
        write_rows(folder / "validation" / "0000.parquet", _task_rows(task, 3))
    root = tmp_path if given == "repository" else folder
    splits = load_splits(TASKS[task], root, 0.2, 0)
    assert len(splits["test"]) == 6 and splits["test"].texts == [
        tuple(row[c] for c in TASKS[task].columns) for row in test
    ]
    assert [len(splits["train"]), len(splits["validation"])] == (
        [25, 3] if has_validation else [20, 5]
    )
    whole = read_hub_files(folder, TASKS[task], ["train"])["train"]
    assert whole.texts == [tuple(row[c] for c in TASKS[task].columns) for row in train]
    assert whole.rows[10] == "train/0001.parquet: row 0"  # errors name the shard and row
    (folder / "train" / "0001.parquet").unlink()
    with pytest.raises(DataNotFoundError, match=r"train/0001.parquet is missing"):
        load_splits(TASKS[task], root, 0.2, 0)


def test_glue_qqps_parquet_export_tests_on_its_validation_split(tmp_path):
    """GLUE's export: ``qqp/{train,validation,test}/0000.parquet``; the test split is
    unlabelled, so, as on the hub route, validation is the test split."""
    columns = TASKS["qqp"].columns
    write_rows(tmp_path / "qqp" / "train" / "0000.parquet", pair_rows(12, columns, 2))
    write_rows(tmp_path / "qqp" / "validation" / "0000.parquet", pair_rows(5, columns, 2))
    hidden = [{**row, "label": -1} for row in pair_rows(3, columns, 2)]
    write_rows(tmp_path / "qqp" / "test" / "0000.parquet", hidden)
    splits = load_splits(TASKS["qqp"], tmp_path, 0.25, 0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 5]
    assert splits["test"].source == str(tmp_path / "qqp" / "validation" / "0000.parquet")
    write_rows(tmp_path / "qqp" / "train-00000-of-00001.parquet", pair_rows(4, columns, 2))
    with pytest.raises(DataNotFoundError, match=r"holds the train split twice"):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)


def test_the_hubs_parquet_files_errors_name_the_shard_and_row(tmp_path):
    folder = tmp_path / "plain_text"  # the config folder of stanfordnlp/imdb and snli
    write_rows(folder / "train-00000-of-00001.parquet", sentiment_rows(6))
    write_rows(folder / "unsupervised-00000-of-00001.parquet", [{"text": "x", "label": -1}])
    write_rows(
        folder / "test-00000-of-00001.parquet", [*sentiment_rows(2), {"text": "ok", "label": 7}]
    )
    with pytest.raises(ValueError, match=r"test-00000-of-00001.parquet: row 2: column 'label'"):
        load_splits(TASKS["imdb"], tmp_path, 0.25, 0)


def test_glue_qqp_saved_on_windows_loads_without_skipping(tmp_path, caplog):
    """CRLF line ends, a byte order mark, a carriage return inside a question (text, as in
    the files' other readers) and blank lines at the end: no row is lost or skipped."""
    train = pair_rows(8, TASKS["qqp"].columns, 2)
    train[2]["question1"] = "What is a carriage\rreturn?"
    root = write_glue_qqp(tmp_path / "QQP", qqp_lines(train), qqp_lines(train[:4]))
    for name in ("train.tsv", "dev.tsv"):
        text = (root / name).read_bytes().decode()
        (root / name).write_bytes(("\ufeff" + text.replace("\n", "\r\n") + "\r\n\n").encode())
    with caplog.at_level("WARNING"):
        splits = load_splits(TASKS["qqp"], root, 0.25, 0)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(splits["train"]) + len(splits["validation"]) == 8 and len(splits["test"]) == 4
    assert ("What is a carriage\rreturn?", train[2]["question2"]) in splits["train"].texts + (
        splits["validation"].texts
    )


def test_aclimdb_hidden_files_are_not_reviews(tmp_path):
    """macOS leaves AppleDouble files (``._0_9.txt``, binary) beside each file it copies to a
    non-Mac drive; hidden files are no reviews."""
    root = write_aclimdb(
        tmp_path / "aclImdb", {"train": sentiment_rows(6), "test": sentiment_rows(2)}
    )
    for folder in ("train/pos", "test/neg"):
        (root / folder / "._0_9.txt").write_bytes(
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X\xff\xfe"
        )
    splits = load_splits(TASKS["imdb"], root, 0.25, 0)
    assert len(splits["train"]) + len(splits["validation"]) == 6 and len(splits["test"]) == 2


def test_a_split_whose_labels_are_hidden_says_so(tmp_path):
    """GLUE QQP's test split saved from the hub: every label is -1 (hidden)."""
    columns = TASKS["qqp"].columns
    write_rows(tmp_path / "train.jsonl", pair_rows(8, columns, 2))
    write_rows(tmp_path / "test.jsonl", [{**r, "label": -1} for r in pair_rows(3, columns, 2)])
    with pytest.raises(
        ValueError, match=r"test.jsonl: no rows with a gold label: all 3 are labelled -1 or '-'"
    ):
        load_splits(TASKS["qqp"], tmp_path, 0.25, 0)
