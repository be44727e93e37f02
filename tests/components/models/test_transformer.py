import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    to_dict,
)
from components.data import translation
from components.data.registry import open_split
from components.data.shards import read_shard, read_stats
from components.data.tokenizer import BOS, EOS, PAD, Tokenizer
from components.models import attention as A
from components.models import transformer as T
from components.models import transformer_decoding as D
from components.training.loop import train_loop_per_worker

TEXTS = ["three hundred and forty-two", "dreihundertzweiundvierzig", "seventeen", "siebzehn",
         "one million and one", "eine Million eins", "forty-two", "zweiundvierzig"]


def model(**kw) -> T.Transformer:
    torch.manual_seed(0)
    cfg = T.Config(d_model=32, heads=4, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0,
                   vocab_size=40, max_len=24, **kw)
    return T.build(cfg).eval()


def ids(rng: np.random.Generator, b: int, n: int, vocab: int = 40) -> torch.Tensor:
    return torch.as_tensor(rng.integers(4, vocab, (b, n)))


# ---------------------------------------------------------------------------- masks

ARCHS = ["encoder_decoder", "decoder_only"]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_decoder_position_never_sees_the_future(arch):
    m, rng = model(arch=arch), np.random.default_rng(0)
    src, tgt = ids(rng, 2, 7), ids(rng, 2, 9)
    base = m(src, tgt)
    for j in range(1, 9):
        changed = tgt.clone()
        changed[:, j:] = torch.as_tensor(rng.integers(4, 40, (2, 9 - j)))
        out = m(src, changed)
        torch.testing.assert_close(out[:, :j], base[:, :j])  # positions before j are untouched
        assert not torch.allclose(out[:, j:], base[:, j:])  # and the changed ones do change


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_padding_never_changes_the_outputs_of_real_tokens(norm, arch):
    m, rng = model(norm=norm, arch=arch), np.random.default_rng(1)
    src, tgt = ids(rng, 3, 6), ids(rng, 3, 5)
    base = m(src, tgt)
    padded_src = F.pad(src, (0, 4), value=PAD)
    padded_tgt = F.pad(tgt, (0, 3), value=PAD)
    out = m(padded_src, padded_tgt)
    torch.testing.assert_close(out[:, :5], base, atol=1e-5, rtol=1e-5)
    if arch == "decoder_only":  # and a row's own padding: a shorter source in the same batch
        short = src.clone()
        short[0, 4:] = PAD
        torch.testing.assert_close(m(short, tgt)[0], m(short[:1, :4], tgt[:1])[0], atol=1e-5, rtol=1e-5)
        return
    memory, mask = m.encode(padded_src)
    torch.testing.assert_close(memory[:, :6], m.encode(src)[0], atol=1e-5, rtol=1e-5)
    assert mask[:, 0, 0].tolist() == [[True] * 6 + [False] * 4] * 3


def test_attention_is_softmax_of_scaled_dot_products():
    torch.manual_seed(0)
    attn = A.Attention(16, 4, 0.0).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    q = attn.q(x).view(2, 5, 4, 4).transpose(1, 2)
    k, v = (t.view(2, 7, 4, 4).transpose(1, 2) for t in attn.kv(mem).chunk(2, -1))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    weights = scores.masked_fill(~mask, -math.inf).softmax(-1)
    expected = attn.out((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, mem, mask), expected, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_is_the_papers_formula():
    pe = A.sinusoidal_table(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_output_projection_is_tied_to_the_embeddings():
    m = model()
    assert m.generator.weight is m.tgt_embed.weight is m.src_embed.weight
    untied = model(tie_output=False, share_embeddings=False)
    assert untied.generator.weight is not untied.tgt_embed.weight
    assert untied.src_embed is not untied.tgt_embed


# ---------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_cached_incremental_decoding_equals_the_full_forward(positional, arch):
    """Step by step from ``start`` (the decoder-only model's sources left-padded, each row at its
    own positions) gives the teacher-forced logits, for sources of different lengths in one batch."""
    m, rng = model(positional=positional, arch=arch), np.random.default_rng(2)
    src = F.pad(ids(rng, 3, 6), (0, 2), value=PAD)
    src[1, 3:] = PAD
    src[2, :] = PAD  # an empty source
    tgt_in = torch.cat([torch.full((3, 1), BOS), ids(rng, 3, 6)], 1)
    full = m(src, tgt_in)
    state = m.start(src)
    steps = [m.step(state, tgt_in[:, t:t + 1], t) for t in range(tgt_in.shape[1])]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_with_beam_one_equals_greedy(arch):
    m, rng = model(arch=arch), np.random.default_rng(3)
    src = F.pad(ids(rng, 5, 8), (0, 3), value=PAD)
    g = D.greedy(m, src, max_len=12)
    b = D.beam_search(m, src, beam_size=1, max_len=12)
    assert torch.equal(g, b[:, :g.shape[1]]) and (b[:, g.shape[1]:] == PAD).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_source_decodes_the_same_alone_and_in_a_batch_of_other_lengths(arch):
    m, rng = model(arch=arch), np.random.default_rng(4)
    src = F.pad(ids(rng, 4, 7), (0, 2), value=PAD)
    for row, length in enumerate((7, 2, 5, 1)):
        src[row, length:] = PAD
    together = D.beam_search(m, src, beam_size=3, max_len=10)
    for row, length in enumerate((7, 2, 5, 1)):
        alone = D.beam_search(m, src[row:row + 1, :length], beam_size=3, max_len=10)[0]
        got = together[row][together[row] != PAD]
        assert torch.equal(got, alone[alone != PAD]), row


def test_the_decoder_only_model_has_no_cross_attention_and_the_encoder_decoders_parameters():
    """The variant's default-size counterpart: 4 causal blocks of d_ff 640 against 2 + 2 of 512,
    the same weight matrices (d_model 128: 917,504 of them), within 1% with biases and norms."""
    def size(**kw):
        cfg = T.Config(d_model=128, heads=4, vocab_size=90, max_len=64, **kw)
        return sum(p.numel() for p in T.build(cfg).parameters())

    decoder_only = T.build(T.Config(arch="decoder_only", d_model=32, heads=4, decoder_layers=2, vocab_size=40))
    assert not decoder_only.encoder and all(block.cross_attn is None for block in decoder_only.decoder)
    assert size(arch="decoder_only", decoder_layers=4, d_ff=640) == pytest.approx(
        size(encoder_layers=2, decoder_layers=2, d_ff=512), rel=0.01)


def test_length_penalty_is_gnmt():
    assert D.length_penalty(torch.tensor(1.0), 0.0).item() == 1.0
    assert D.length_penalty(torch.tensor(7.0), 0.6).item() == pytest.approx((12 / 6) ** 0.6)


def test_shift_adds_bos_and_eos():
    tgt = torch.tensor([[5, 6, 7], [8, 0, 0]])
    tgt_in, labels = T.shift(tgt)
    assert tgt_in.tolist() == [[BOS, 5, 6, 7], [BOS, 8, 0, 0]]
    assert labels.tolist() == [[5, 6, 7, EOS], [8, EOS, 0, 0]]


def test_config_rejects_heads_that_do_not_divide_d_model():
    from components.config import parse

    with pytest.raises(ConfigError, match="heads: d_model \\(30\\) must be divisible by heads \\(4\\)"):
        parse(T.Config, {"d_model": 30, "heads": 4}, "train.transformer.model")


# ---------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_and_is_deterministic(tmp_path):
    tok = Tokenizer.fit(TEXTS * 3, vocab_size=60)
    assert Tokenizer.fit(TEXTS * 3, vocab_size=60).to_dict() == tok.to_dict()
    assert len(tok) <= 60 and any(len(t) > 2 for t in tok.vocab[4:])  # merges were learned
    for text in TEXTS + ["  forty-two   hundred  "]:
        assert tok.decode(tok.encode(text)) == " ".join(text.split())
        assert len(tok.encode(text)) < len(text.replace(" ", "")) + text.count(" ") + 1
    tok.save(tmp_path / "tok.json")
    again = Tokenizer.load(tmp_path / "tok.json")
    assert again.encode("dreihundertsiebzehn") == tok.encode("dreihundertsiebzehn")
    assert tok.decode(tok.encode("qx")) == "<unk><unk>"  # characters never seen in training
    assert tok.decode([*tok.encode("siebzehn"), EOS, *tok.encode("zwei")]) == "siebzehn"


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_tokenizer_round_trips_unicode_and_marks_unseen_characters(model):
    texts = ["über dreißig Straßen", "zweiundzwanzig Brücken", "one bridge"] * 4
    tok = Tokenizer.fit(texts, vocab_size=80, model=model)
    assert tok.model == model and tok.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    for text in texts[:3]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts[:3]) == [tok.encode(t) for t in texts[:3]]
    unseen = tok.decode(tok.encode("über 42 ß"))  # digits never occur in the train text
    assert unseen.startswith("über ") and "<unk>" in unseen and unseen.endswith("ß") and "4" not in unseen


def test_a_corrupt_tokenizer_file_is_named_with_the_stage_that_writes_it(tmp_path):
    from components.data.manifest import DataError

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match="tokenizer.json: not a readable tokenizer file.*preprocess"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_a_config_from_the_hand_written_bpe_still_loads():
    old = {"type": "bpe", "vocab": ["<pad>", "<unk>", "<bos>", "<eos>", "\u2581", "a", "b", "ab", "\u2581ab"],
           "merges": [["a", "b"], ["\u2581", "ab"]]}
    tok = Tokenizer.from_dict(old)
    assert tok.encode("ab  ab") == [8, 8] and tok.decode([8, 8, 3, 5]) == "ab ab"


def test_tokenizer_rejects_a_vocabulary_smaller_than_the_alphabet():
    with pytest.raises(ValueError, match="raise the tokenizer's vocab_size"):
        Tokenizer.fit(TEXTS, vocab_size=10)


# ---------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def number_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbers")
    cfg = translation.Config(num_train=600, num_val=80, num_test=80, max_digits=4, vocab_size=90,
                             samples_per_shard=200)
    manifest = translation.ingest(cfg, root / "raw")
    translation.preprocess(cfg, root / "raw", root / "shards", manifest)
    return root


def test_number_data_keeps_test_numbers_out_of_training(number_shards):
    raw = number_shards / "raw"
    train = {s for s, _ in translation.read_split(raw, "train")}
    test = translation.read_split(raw, "test")
    assert len(test) == 80 and not train & {s for s, _ in test}
    assert ("three hundred and forty-two", "dreihundertzweiundvierzig") in translation.number_pairs(
        np.array([342]), "en", "de")
    stats = read_stats(number_shards / "shards")
    assert stats["fields"] == ["src.npy", "tgt.npy"] and stats["assets"]["tokenizer"] == "tokenizer.json"
    strata: list[str] = []
    test_pairs = translation.read_split(raw, "test", strata)
    assert stats["stratified"] and set(strata) <= set(translation.STRATA) and len(set(strata)) >= 3
    shard_strata = [s for *_, batch in open_split(number_shards / "shards", "test", batch_size=80,
                                                    fields=("src.txt", "stratum.txt")) for s in batch]
    assert sorted(shard_strata) == sorted(strata) and len(test_pairs) == 80
    src, tgt = next(iter(open_split(number_shards / "shards", "train", batch_size=16)))
    assert src.shape[0] == 16 and src.dtype == torch.int16 and (src[:, 0] != PAD).all()
    for entry in stats["splits"].values():  # every shard records its tokens, for token-budget batches
        for shard in entry["shards"]:
            pairs = read_shard(number_shards / "shards" / shard["file"], shard, ("src.npy", "tgt.npy"))
            assert shard["tokens"] == sum(len(src) + len(tgt) for src, tgt in pairs) > 0
    tok = Tokenizer.load(number_shards / "shards" / "tokenizer.json")
    _, src_text, tgt_text = next(iter(open_split(number_shards / "shards", "test", batch_size=8,
                                                   fields=("src.npy", "src.txt", "tgt.txt"))))
    assert len(src_text) == 8 and all(tok.decode(tok.encode(t)) == t for t in tgt_text)


def test_number_structure_strata():
    cases = {7: "small", 17: "small", 999: "small", 5000: "round", 88_000_000: "round", 1001: "inner_zero",
             88_000_061: "inner_zero", 88_300_061: "inner_zero", 123_456_789: "full", 45_678: "other",
             103_456_789: "full", 1_234_506: "other"}
    assert {n: translation.structure(n, 9) for n in cases} == cases
    assert translation.structure(4567, 4) == "full"  # full = max_digits digits
    assert translation.stratum_shares({"small": 1, "other": 1}, 4) == {"small": 1.0}  # no 'other' below 5 digits


def test_every_split_holds_the_strata_in_the_same_shares_and_no_number_twice():
    from collections import Counter

    cfg = translation.Config(num_train=3000, num_val=300, num_test=600, max_digits=9)
    drawn = translation.draw_splits(cfg)
    assert {k: len(v) for k, v in drawn.items()} == {"test": 600, "val": 300, "train": 3000}
    numbers = [n for v in drawn.values() for n, _ in v]
    assert len(set(numbers)) == len(numbers)
    assert all(translation.structure(n, 9) == s for v in drawn.values() for n, s in v)
    for split, items in drawn.items():
        counts = Counter(s for _, s in items)
        for stratum, share in cfg.strata.items():  # the same shares in every split, up to rounding
            assert abs(counts[stratum] - share * len(items)) < 1, (split, stratum, counts)
    assert drawn == translation.draw_splits(cfg)  # the seed decides
    with pytest.raises(ConfigError, match="strata: shares of number structures"):
        from components.config import parse
        parse(translation.Config, {"strata": {"tiny": 1.0}}, "data.translation")


def test_exact_match_is_reported_per_stratum():
    from components.evaluation.translation import evaluate, markdown

    refs = ["eins", "zwei", "drei", "vier", "fünf"]
    strata = ["small", "round", "small", "round", "small"]
    batch = (torch.ones(5, 3, dtype=torch.long), ["a"] * 5, refs, strata)
    wrong_on = {"zwei", "drei"}
    result = evaluate({"beam": lambda src: [r if r not in wrong_on else "x" for r in refs]}, [batch],
                      strata_order=("small", "round"))
    assert result["exact_match"] == pytest.approx(3 / 5)
    assert result["exact_match_small"] == pytest.approx(2 / 3) and result["exact_match_round"] == pytest.approx(1 / 2)
    assert list(result["by_stratum"]["beam"]) == ["small", "round"]
    assert "| small | 3 | 0.6667 |" in markdown(result, "test")


def test_tsv_corpus_is_read_deduplicated_and_split_by_source(tmp_path):
    lines = [f"sentence {i}\tSatz {i}\tCC-BY attribution" for i in range(60)] + ["sentence 3\tSatz drei"]
    (tmp_path / "corpus.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = translation.Config(source="tsv", path=str(tmp_path / "corpus.tsv"), num_train=0, num_val=5, num_test=10)
    manifest = translation.ingest(cfg, tmp_path / "raw")
    assert manifest["split_sizes"] == {"train": 45, "val": 5, "test": 10}
    pairs = {k: translation.read_split(tmp_path / "raw", k) for k in ("train", "val", "test")}
    sources = [{s for s, _ in v} for v in pairs.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    assert ("sentence 3", "Satz drei") in [p for v in pairs.values() for p in v]  # last one of a repeat wins
    stats = translation.preprocess(cfg, tmp_path / "raw", tmp_path / "shards", manifest)
    assert stats["splits"]["test"]["samples"] == 10


def test_a_malformed_tsv_line_names_the_file_and_line(tmp_path):
    from components.data.manifest import DataError

    (tmp_path / "bad.tsv").write_text("one\teins\ntwo zwei\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        translation.read_parallel_tsv(tmp_path / "bad.tsv")
    with pytest.raises(ConfigError, match="path: source tsv needs the corpus file"):
        from components.config import parse
        parse(translation.Config, {"source": "tsv"}, "data.translation")


# ---------------------------------------------------------------------------- training

def test_one_epoch_trains_and_predicts_raw_strings(number_shards, tmp_path):
    cfg = TrainConfig(lr=3e-3, epochs=2, batch_size=32, log_every=5, label_smoothing=0.1,
                      optimizer=OptimizerConfig(name="adam", betas=[0.9, 0.98], eps=1e-9, weight_decay=0.0),
                      schedule=ScheduleConfig(name="inverse_sqrt", warmup=0.1))
    cfg.model = T.Config(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, d_ff=64, dropout=0.0)
    metrics = train_loop_per_worker({"algo": "transformer", "train": to_dict(cfg),
                                     "data_dir": str(number_shards / "shards"), "run_dir": str(tmp_path)})
    epochs = (tmp_path / "epochs.jsonl").read_text().splitlines()
    assert len(epochs) == 2 and metrics["val_accuracy"] > 0.25  # token accuracy; chance is ~1/90
    from components.training import checkpoint as ckpt

    state, meta = ckpt.load(ckpt.latest(tmp_path / "checkpoints"))
    bound = T.Config(**{**meta["config"]["model"]})
    assert bound.vocab_size == 90 and bound.tokenizer["tokenizer"]["model"]["type"] == "BPE"  # bound from the data, saved with it
    m = T.build(bound)
    m.load_state_dict(state["model"])
    out = T.predict(m, ["seventeen", "three hundred and forty-two"], bound)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    with pytest.raises(TypeError, match="expected a list of source strings"):
        T.predict(m, "seventeen", bound)


def test_token_budget_batches_train_with_less_padding_than_fixed_size_ones(number_shards, tmp_path):
    """``batch_tokens``: the epoch's padding is logged, and is far below that of fixed-size batches
    of the same mean size; the step count is what the token budget asks for."""
    stats = read_stats(number_shards / "shards")
    train = stats["splits"]["train"]
    tokens = sum(s["tokens"] for s in train["shards"])
    runs = {}
    for name, batching in (("tokens", {"batch_tokens": 400}), ("size", {"batch_size": round(400 * train["samples"] / tokens)})):
        cfg = TrainConfig(lr=3e-3, epochs=1, log_every=5, optimizer=OptimizerConfig(name="adam", betas=[0.9, 0.98]),
                          schedule=ScheduleConfig(name="inverse_sqrt", warmup=0.1), **batching)
        cfg.model = T.Config(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, d_ff=64, dropout=0.0)
        runs[name] = train_loop_per_worker({"algo": "transformer", "train": to_dict(cfg),
                                            "data_dir": str(number_shards / "shards"), "run_dir": str(tmp_path / name)})
    assert runs["tokens"]["step"] == -(-tokens // 400)
    assert runs["tokens"]["train_padding"] < 0.6 * runs["size"]["train_padding"]
    assert math.isfinite(runs["tokens"]["val_loss"])
