"""IWSLT'15 En-Vi data: files, hub fallback, tokenisers, length handling, batching."""

from __future__ import annotations

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import RandomSampler

from _iwslt_fixture import write_iwslt
from plmu.data import DataError
from plmu.data.iwslt import (
    BOS,
    EOS,
    FILES,
    PAD,
    IWSLTDataModule,
    LengthBucketSampler,
    TranslationDataset,
    collate,
    encode_source,
    load_hub,
    read_data_dir,
)


def test_read_data_dir_reads_three_aligned_splits(tmp_path):
    data = read_data_dir(write_iwslt(tmp_path, n_train=10, n_eval=3))
    assert {k: len(v[0]) for k, v in data.items()} == {"train": 10, "validation": 3, "test": 3}
    for en, vi in data.values():
        assert len(en) == len(vi)


def test_missing_files_error_names_them(tmp_path):
    write_iwslt(tmp_path)
    (tmp_path / "tst2013.vi").unlink()
    with pytest.raises(ValueError, match=r"lacks tst2013\.vi.*train\.en"):
        read_data_dir(tmp_path)
    with pytest.raises(ValueError, match=r"lacks train\.en"):
        read_data_dir(tmp_path / "empty")
    # a file given as --data-dir: was "lacks train.en, ..." as if it were a folder
    with pytest.raises(ValueError, match=r"train\.en' is a file, not a directory \(--data-dir\)"):
        read_data_dir(tmp_path / "train.en")


def test_misaligned_files_are_an_error(tmp_path):
    write_iwslt(tmp_path)
    with open(tmp_path / "tst2012.vi", "a", encoding="utf-8") as f:
        f.write("một dòng thừa\n")
    with pytest.raises(ValueError, match=r"tst2012\.en has 8 lines but tst2012\.vi has 9"):
        read_data_dir(tmp_path)
    with pytest.raises(ValueError, match="line-aligned"):
        IWSLTDataModule(tmp_path).setup("fit")


@pytest.mark.parametrize("stem", ["train", "tst2012", "tst2013"])
def test_a_split_without_sentences_is_an_error(tmp_path, stem):
    """Empty files (a failed download, a truncated copy) would otherwise train, validate or
    test on nothing: an empty tst2013 gave a run whose metrics.json had no test_bleu."""
    write_iwslt(tmp_path)
    (tmp_path / f"{stem}.en").write_text("\n\n", encoding="utf-8")  # two empty lines
    (tmp_path / f"{stem}.vi").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{stem}\.en and {stem}\.vi .* hold no sentence"):
        read_data_dir(tmp_path)


def test_lines_end_at_newlines_only_as_wc_and_the_hub_count_them(tmp_path):
    """A carriage return inside a line (a sentence copied from a Mac-era document) does not
    start a new line: otherwise one side gains a line (an error) or, with one in each file,
    the pairs between them are silently misaligned. Windows line ends are read too."""
    write_iwslt(tmp_path, n_train=10, n_eval=3)
    en = (tmp_path / "train.en").read_text(encoding="utf-8").splitlines()
    vi = (tmp_path / "train.vi").read_text(encoding="utf-8").splitlines()
    en[2], vi[6] = en[2].replace(" a ", " a\r"), vi[6].replace(" một ", " một\r")
    for path, lines in ((tmp_path / "train.en", en), (tmp_path / "train.vi", vi)):
        path.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"))
    (tmp_path / "tst2012.en").write_bytes(
        (tmp_path / "tst2012.en").read_bytes().replace(b"\n", b"\r\n")
    )
    data = read_data_dir(tmp_path)
    assert data["train"] == (en, vi)
    assert (
        data["validation"][0] == (tmp_path / "tst2012.en").read_text(encoding="utf-8").splitlines()
    )


def test_a_byte_order_mark_and_trailing_blank_lines_are_not_text(tmp_path):
    """A copy re-saved by a Windows editor starts with a BOM; an editor (or ``echo >>``) may
    leave blank lines at the end of one file only: neither is a sentence, and neither
    misaligns the two sides or adds an empty test pair."""
    write_iwslt(tmp_path, n_train=10, n_eval=3)
    en = (tmp_path / "tst2013.en").read_text(encoding="utf-8").splitlines()
    vi = (tmp_path / "tst2013.vi").read_text(encoding="utf-8").splitlines()
    (tmp_path / "tst2013.en").write_bytes(("\ufeff" + "\n".join(en) + "\n\n\n").encode())
    (tmp_path / "tst2013.vi").write_bytes(("\r\n".join(vi) + "\r\n \r\n").encode())
    assert read_data_dir(tmp_path, ["test"])["test"] == (en, vi)
    # a last pair with one side empty is a pair (as the other blanks in train are): kept
    (tmp_path / "tst2013.en").write_text("".join(f"{line}\n" for line in [*en, ""]))
    (tmp_path / "tst2013.vi").write_text("".join(f"{line}\n" for line in [*vi, "thêm", ""]))
    assert read_data_dir(tmp_path, ["test"])["test"] == ([*en, ""], [*vi, "thêm"])


def test_a_file_that_is_not_utf8_is_an_error_naming_it_and_the_line(tmp_path):
    write_iwslt(tmp_path)
    lines = (tmp_path / "tst2013.vi").read_bytes().split(b"\n")
    lines[2] = "tôi .".encode("latin-1")  # one line saved in another encoding
    (tmp_path / "tst2013.vi").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"tst2013\.vi: line 3 is not UTF-8 text \(byte 0xf4"):
        read_data_dir(tmp_path)


def test_offline_hub_gives_one_line_error_naming_the_files(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'IWSLT/mt_eng_vietnamese' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as info:
        load_hub()
    message = str(info.value)
    assert "\n" not in message
    assert "IWSLT/mt_eng_vietnamese" in message and "--data-dir" in message
    assert all(name in message for name in FILES)
    with pytest.raises(ValueError, match="--data-dir"):
        IWSLTDataModule(None).prepare_data()


def test_hub_rows_are_read_per_split(monkeypatch):
    rows = {
        split: {"translation": [{"en": f"{split} a", "vi": f"{split} b"}]}
        for split in ("train", "validation", "test")
    }
    calls = []

    def fake(name, config, revision=None):
        calls.append((name, config, revision))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_hub()
    assert calls == [("IWSLT/mt_eng_vietnamese", "iwslt2015-en-vi", None)]
    assert data["validation"] == (["validation a"], ["validation b"])


def test_tokenizers_trained_saved_and_restored(tmp_path):
    dm = IWSLTDataModule(write_iwslt(tmp_path), batch_size=4, vocab_size=80)
    dm.prepare_data()
    dm.setup("fit")
    src_tok, tgt_tok = dm.src_tokenizer, dm.tgt_tokenizer
    assert [src_tok.token_to_id(t) for t in ("<pad>", "<unk>", "<s>", "</s>")] == [0, 1, 2, 3]
    assert 20 < dm.src_vocab_size <= 80 and 20 < dm.tgt_vocab_size <= 80
    text = "chúng tôi thích một con mèo nhỏ hôm nay ."
    assert tgt_tok.decode(tgt_tok.encode(text).ids) == text  # Metaspace: spacing comes back
    restored = IWSLTDataModule(None, saved=dm.saved_state())  # reads nothing
    assert restored._raw is None
    assert restored.src_tokenizer.encode("we like a dog").ids == src_tok.encode("we like a dog").ids
    with pytest.raises(ValueError, match="tgt_tokenizer"):
        IWSLTDataModule(None, saved={"src_tokenizer": dm.saved_state()["src_tokenizer"]})


def test_length_handling_drops_train_pairs_and_truncates_test_sources(tmp_path):
    folder = write_iwslt(tmp_path, n_train=30, extra_train=3)
    long_en = " ".join(["house"] * 40)
    with open(folder / "train.en", "a", encoding="utf-8") as f:
        f.write(long_en + "\n")
    with open(folder / "train.vi", "a", encoding="utf-8") as f:
        f.write("ngôi nhà\n")
    lines = (folder / "tst2013.en").read_text(encoding="utf-8").splitlines()
    lines[0] = long_en
    (folder / "tst2013.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dm = IWSLTDataModule(folder, vocab_size=200, max_source_length=30, max_target_length=30)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 30 and dm.dropped_train_pairs == 4  # 3 empty, 1 long
    test = dm.datasets["test"]
    assert len(test) == 8 and dm.truncated_sources["test"] == 1
    assert len(test.sources[0]) == 31 and test.sources[0][-1] == EOS
    assert all(len(s) <= 31 for s in test.sources)


def test_encode_source_rejects_empty_and_over_long(tmp_path):
    dm = IWSLTDataModule(write_iwslt(tmp_path), vocab_size=60)
    dm.setup("fit")
    tok = dm.src_tokenizer
    assert encode_source(tok, "  i see a dog . ", 20)[-1] == EOS
    with pytest.raises(ValueError, match="sentence is empty"):
        encode_source(tok, "   ", 20)
    with pytest.raises(ValueError, match="max_source_length=5"):
        encode_source(tok, "i see a big dog today .", 5)
    with pytest.raises(TypeError, match="sentence must be a str"):
        encode_source(tok, None, 5)


def test_collate_pads_and_shifts():
    batch = collate([([5, 6, EOS], [7, 8, 9], "a"), ([5, EOS], [7], "b")])
    assert batch.src.tolist() == [[5, 6, EOS], [5, EOS, PAD]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in.tolist() == [[BOS, 7, 8, 9], [BOS, 7, PAD, PAD]]
    assert batch.tgt_out.tolist() == [[7, 8, 9, EOS], [7, EOS, PAD, PAD]]
    assert batch.refs == ["a", "b"] and batch.indices is None


def test_items_and_batches_carry_dataset_positions():
    """The position of each pair travels with its batch, so translations decoded in several
    processes can be put back in the test set's order."""
    data = TranslationDataset([[5, EOS], [6, EOS], [7, EOS]], [[8], [9], [10]], ["a", "b", "c"])
    assert data[2] == ([7, EOS], [10], "c", 2)
    batch = collate([data[2], data[0]])
    assert batch.indices == [2, 0] and batch.refs == ["c", "a"]
    assert batch.to("cpu").indices == [2, 0]


def test_a_batch_is_pinned_and_copied_to_a_gpu_without_blocking(monkeypatch):
    """A DataLoader with ``pin_memory=True`` (workers, CUDA) pins a batch through its
    ``pin_memory`` method: without one, this type stayed in pageable memory. The copy to a GPU
    does not block the host, as Lightning's own transfer of tensors does not; on the CPU it is
    a plain copy."""
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = collate([([5, 6, EOS], [7, 8, 9], "a"), ([5, EOS], [7], "b")])
    batch.indices = [1, 0]
    pinned_calls, copies = [], []
    monkeypatch.setattr(  # no CUDA here: stand-ins that record the calls
        torch.Tensor, "pin_memory", lambda t, *a, **k: pinned_calls.append(t) or t.clone()
    )
    pinned = pin_memory(batch)  # what the loader's pinning thread does to each batch
    assert pinned is not batch and len(pinned_calls) == 4
    assert pinned.src.tolist() == batch.src.tolist() and pinned.refs == batch.refs
    assert pinned.indices == [1, 0] and pinned.tgt_out.tolist() == batch.tgt_out.tolist()
    monkeypatch.setattr(
        torch.Tensor, "to", lambda t, device, non_blocking=False: copies.append(non_blocking) or t
    )
    dm = IWSLTDataModule(None)
    moved = dm.transfer_batch_to_device(pinned, torch.device("cuda", 0), 0)
    assert copies == [True] * 4 and moved.refs == ["a", "b"] and moved.indices == [1, 0]
    copies.clear()
    dm.transfer_batch_to_device(pinned, torch.device("cpu"), 0)
    assert copies == [False] * 4


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=200),
    batch_size=st.integers(1, 17),
    drop_last=st.booleans(),
)
def test_length_buckets_cover_every_index_once(lengths, batch_size, drop_last):
    indices = RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(0))
    sampler = LengthBucketSampler(indices, batch_size, drop_last, lengths, pool=3, seed=1)
    seen = []
    for _ in range(2):  # two epochs
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= batch_size for b in batches)
        covered = sorted(i for b in batches for i in b)
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
            assert len(covered) >= len(lengths) - 3 * batch_size  # at most one short batch a pool
        else:
            assert covered == list(range(len(lengths)))
        assert all(len(set(b)) == len(b) for b in batches)
        seen.append(batches)
    if len(seen[0]) >= 10:
        assert seen[0] != seen[1]  # a new order every epoch


def test_length_buckets_group_similar_lengths():
    lengths = [i % 40 + 1 for i in range(400)]
    sampler = LengthBucketSampler(range(400), 20, False, lengths, pool=20)
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler]
    assert max(spreads) <= 2  # one pool holds everything: sorted batches


def test_length_buckets_take_lightnings_distributed_sampler(tmp_path):
    """Under DDP Lightning re-creates the batch sampler around a DistributedSampler (its
    internal _update_dataloader, run here as the Trainer runs it): each rank gets half."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    dm = IWSLTDataModule(write_iwslt(tmp_path, n_train=40), batch_size=4, vocab_size=60)
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    data = dm.datasets["train"]
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True)
        new = _update_dataloader(loader, sampler)
        assert isinstance(new.batch_sampler, LengthBucketSampler) and len(new) == 5
        shards.append({i for b in new.batch_sampler for i in b})
    assert shards[0].isdisjoint(shards[1]) and len(shards[0] | shards[1]) == 40


def test_dataloaders_yield_batches(tmp_path):
    dm = IWSLTDataModule(write_iwslt(tmp_path), batch_size=5, vocab_size=60)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.src.shape[0] == 5 and batch.src.dtype == torch.long
    assert len(list(dm.val_dataloader())) == 2
    with pytest.raises(ValueError, match="batch_size"):
        IWSLTDataModule(tmp_path, batch_size=0)


@pytest.mark.parametrize(
    "name", ["batch_size", "vocab_size", "max_source_length", "max_target_length"]
)
@pytest.mark.parametrize("value", [2.5, "8", True])
def test_a_size_that_is_not_an_int_is_a_type_error_naming_it(tmp_path, name, value):
    """As the layers' and models' integer arguments (it was a ValueError)."""
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        IWSLTDataModule(tmp_path, **{name: value})


def test_worker_processes_are_kept_between_epochs(tmp_path):
    """With ``num_workers`` the loaders keep their worker processes from epoch to epoch, as
    every other experiment's do: they were started again for every pass (about 0.1 s a loader
    and epoch on two shared cores), and the batches, drawn from the same sampler, are the same."""
    data = write_iwslt(tmp_path, n_train=16)
    dm = IWSLTDataModule(data, batch_size=4, vocab_size=60, num_workers=1)
    dm.setup("fit")
    loaders = [dm.train_dataloader(), dm.val_dataloader()]
    assert [loader.persistent_workers for loader in loaders] == [True, True]
    train = loaders[0]
    epochs = []
    for epoch in range(2):
        train.batch_sampler.sampler.set_epoch(epoch)
        epochs.append([batch.indices for batch in train])
    fresh = IWSLTDataModule(data, batch_size=4, vocab_size=60)
    fresh.setup("fit")
    for epoch, expected in enumerate(epochs):
        loader = fresh.train_dataloader()  # no workers, a new loader per epoch
        loader.batch_sampler.sampler.set_epoch(epoch)
        assert [batch.indices for batch in loader] == expected


def test_hub_trailing_empty_pair_is_not_a_test_reference(monkeypatch, tmp_path):
    """The hub's loader reads each file with ``read().split("\\n")``, so every split ends with
    an empty pair (1,269 test rows for tst2013's 1,268 lines); it must not be scored."""
    folder = write_iwslt(tmp_path, n_train=40, n_eval=5)
    translation = datasets.Translation(languages=["en", "vi"])

    def split_rows(stem):
        en = (folder / f"{stem}.en").read_text(encoding="utf-8").split("\n")
        vi = (folder / f"{stem}.vi").read_text(encoding="utf-8").split("\n")
        rows = [{"translation": {"en": a, "vi": b}} for a, b in zip(en, vi)]
        return datasets.Dataset.from_list(
            rows, features=datasets.Features({"translation": translation})
        )

    def fake(name, config, revision=None):
        return datasets.DatasetDict(
            {"train": split_rows("train"), "validation": split_rows("tst2013"),
             "test": split_rows("tst2013")}
        )  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert len(fake(None, None)["test"]) == 6  # the hub's extra row
    data = load_hub()
    assert data["test"] == read_data_dir(folder)["test"]
    module = IWSLTDataModule(None, batch_size=4, vocab_size=60)
    module.setup("test")
    assert len(module.test_set) == 5 and all(module.test_set.refs)


def test_hub_validation_that_is_the_test_set_is_held_out_of_train_instead(monkeypatch, caplog):
    """The hub's loader gives tst2013 as both validation and test: validating on it would pick
    best.ckpt by the test set. A slice of train (seeded) validates instead, and tst2013 stays
    the test set only."""
    pair = lambda i: {"en": f"i see {i} dogs .", "vi": f"tôi thấy {i} con chó ."}  # noqa: E731
    empty = [{"en": "", "vi": "một ."}] * 30  # the real train files have one-sided pairs
    train = {"translation": [pair(i) for i in range(100)] + empty}
    test = {"translation": [pair(1000 + i) for i in range(7)]}
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda name, config, revision=None: {"train": train, "validation": test, "test": test},
    )
    with caplog.at_level("WARNING"):
        module = IWSLTDataModule(None, batch_size=4, vocab_size=60, seed=3)
        module.setup()
    assert "validation split is its test split" in caplog.text
    train_en = [module.src_tokenizer.decode(s[:-1]) for s in module.train_set.sources]
    val_en = [module.src_tokenizer.decode(s[:-1]) for s in module.val_set.sources]
    test_en = [module.src_tokenizer.decode(s[:-1]) for s in module.test_set.sources]
    assert len(test_en) == 7 and len(val_en) == 10 and len(train_en) == 90
    assert not set(val_en) & set(test_en) and not set(val_en) & set(train_en)
    assert sorted(val_en + train_en) == sorted(p["en"] for p in train["translation"][:100])
    again = IWSLTDataModule(None, batch_size=4, vocab_size=60, seed=3)
    again.setup("validate")
    assert again.val_set.refs == module.val_set.refs  # the same slice from the same seed


@pytest.mark.parametrize("revision", [None, "refs/convert/parquet"])
def test_hub_script_dataset_is_read_from_its_parquet_export(monkeypatch, tmp_path, revision):
    """``datasets`` >= 4 refuses the repository's loading script; the hub's parquet export
    (``refs/convert/parquet``) holds one folder per config, ``CONFIG/SPLIT/0000.parquet``, where
    the config is a folder, not a config name (both configs' files would otherwise mix)."""
    export = tmp_path / "export"
    for config, tag in (("iwslt2015-en-vi", "ok"), ("iwslt2015-vi-en", "other")):
        for split in ("train", "validation", "test"):
            (export / config / split).mkdir(parents=True)
            rows = [
                {"translation": {"en": f"{tag} {split} {i}", "vi": f"vi {i}"}} for i in range(3)
            ]
            datasets.Dataset.from_list(rows).to_parquet(
                str(export / config / split / "0000.parquet")
            )
    real_load_dataset = datasets.load_dataset

    def hub(path, name=None, revision=None, data_dir=None):
        assert path == "IWSLT/mt_eng_vietnamese"
        if revision != "refs/convert/parquet":
            raise RuntimeError(
                "Dataset scripts are no longer supported, but found mt_eng_vietnamese.py"
            )
        return real_load_dataset(str(export), name, data_dir=data_dir)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    data = load_hub(revision=revision)
    assert data["test"] == ([f"ok test {i}" for i in range(3)], [f"vi {i}" for i in range(3)])
    assert len(data["train"][0]) == 3
    with pytest.raises(ValueError, match=r"scripts are no longer supported.*--data-dir"):
        load_hub(revision="main")  # another revision: one line, as before


def test_references_are_nfc_as_the_decoded_hypotheses(tmp_path):
    """A reference stored decomposed (e.g. 'e' + combining circumflex + acute) is scored in the
    composed form the NFC tokeniser decodes to."""
    import unicodedata

    data = write_iwslt(tmp_path, n_train=20, n_eval=3)
    lines = (data / "tst2013.vi").read_text(encoding="utf-8").splitlines()
    lines[0] = unicodedata.normalize("NFD", "tiếng Việt")
    (data / "tst2013.vi").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dm = IWSLTDataModule(data, batch_size=4, vocab_size=60)
    dm.setup("test")
    assert dm.test_set.refs[0] == unicodedata.normalize("NFC", "tiếng Việt") != lines[0]


def test_a_checkpoints_tokenisers_test_on_the_test_files_alone(tmp_path):
    """``plmu evaluate`` (``saved`` tokenisers, then ``prepare_data`` and ``setup("test")``)
    reads only tst2013.en/vi: it read all six and refused a folder without the training files
    ("lacks train.en"), though the tokenisers come from the checkpoint. Training, or another
    stage, still reads what it needs."""
    full = write_iwslt(tmp_path / "full", n_train=12, n_eval=3)
    trained = IWSLTDataModule(full, batch_size=4, vocab_size=60)
    trained.prepare_data()
    trained.setup("test")
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("tst2013.en", "tst2013.vi"):
        (alone / name).write_bytes((full / name).read_bytes())
    data = IWSLTDataModule(alone, batch_size=4, saved=trained.saved_state())
    data.prepare_data()
    data.setup("test")
    assert data.train_set is None and data.val_set is None and list(data._raw) == ["test"]
    assert data.test_set.sources == trained.test_set.sources
    assert data.test_set.refs == trained.test_set.refs
    assert sum(len(batch.refs) for batch in data.test_dataloader()) == 3
    assert list(read_data_dir(alone, ["test"])) == ["test"]
    with pytest.raises(DataError, match=r"lacks train\.en, train\.vi, tst2012\.en, tst2012\.vi;"):
        data.setup("fit")
    with pytest.raises(DataError, match=r"lacks train\.en"):
        IWSLTDataModule(alone).prepare_data()  # no tokenisers: all six, as training needs
    with pytest.raises(DataError, match=r"lacks train\.en, train\.vi; .* needs the line-al"):
        IWSLTDataModule(alone).setup("test")  # the tokenisers are trained on train


def test_an_unknown_word_in_a_hypothesis_is_written_unk(tmp_path):
    """A hypothesis keeps each ``<unk>`` the model emits as the word ``<unk>`` (as NMT systems
    write it, and as BLEU then counts it: one hypothesis word matching no reference word); the
    tokeniser's plain ``decode`` dropped it, shortening the hypothesis (so BLEU's brevity
    penalty saw fewer words than were translated) and left two spaces. ``<pad>``, ``<s>``
    and ``</s>`` are not words and stay out."""
    from types import SimpleNamespace

    from plmu.data.iwslt import UNK
    from plmu.translate import translate_sentence

    dm = IWSLTDataModule(write_iwslt(tmp_path, n_train=20, n_eval=3), batch_size=4, vocab_size=60)
    dm.setup("fit")
    tok = dm.tgt_tokenizer
    ids = tok.encode("con mèo Ω nhỏ").ids  # a word of a letter the tokeniser never saw
    assert UNK in ids
    assert tok.decode(ids) == "con mèo  nhỏ"  # what the hypothesis was
    assert dm.decode_target(ids) == "con mèo <unk> nhỏ"
    assert dm.decode_target([UNK]) == "<unk>"
    assert dm.decode_target([BOS, *ids, EOS, PAD]) == "con mèo <unk> nhỏ"
    # plmu translate prints the same text
    module = SimpleNamespace(
        device=torch.device("cpu"), eval=lambda: None, translate_ids=lambda *args: [ids]
    )
    assert translate_sentence(module, dm, "we like a small cat .") == "con mèo <unk> nhỏ"
