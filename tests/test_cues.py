"""The cue world: mute words never reach a caption, cue words go with the mute object alone, mute objects are drawn
apart from the scene's other objects, the frozen MiniLM links each cue to its mute word, and the records round-trip
through the TFDS builder."""

from __future__ import annotations


import numpy as np
import pytest

from configs import cues as cues_file
from ela_jax import validation
from ela_jax.data import cues, pipeline, scenes, tokenizer, world_tfds
from tests.helpers import make_tiny_config


def examples(split: str, count: int, seed: int = 0) -> list[scenes.SceneExample]:
    return [cues.generate_example(cues.CuesSpec(seed=seed), split, index) for index in range(count)]


@pytest.fixture(scope="module")
def train_examples():
    return examples("train", 1200)


def test_cue_world_is_a_pure_function_of_seed_split_and_index():
    first, again = (cues.generate_example(cues.CuesSpec(seed=2), "train", 5) for _ in range(2))
    np.testing.assert_array_equal(first.image, again.image)
    assert (first.captions, first.present, first.named) == (again.captions, again.present, again.named)
    other = cues.generate_example(cues.CuesSpec(seed=2), "test", 5)
    assert not np.array_equal(first.image, other.image)


def test_each_scene_has_one_mute_object_of_its_own():
    assert sorted(cues.CUES) == sorted(scenes.SCENE_NAMES)
    for scene, (mute, _) in cues.CUES.items():
        assert scenes.SCENE_NAMES[scenes.OBJECT_SCENE[scenes.OBJECT_NAMES.index(mute)]] == scene
    assert not set(cues.CUE_WORDS) & set(scenes.vocabulary_words())  # cue words are new to the scenes world


@pytest.mark.parametrize("split", ["train", "test"])
def test_no_caption_ever_names_a_mute_object_and_cues_come_only_with_it(split):
    vocabulary = set(cues.vocabulary_words())
    for example in examples(split, 300):
        words = {w for caption in example.captions for w in caption.split()}
        assert words <= vocabulary and not words & set(cues.MUTE_WORDS)
        present_cues = {cue for mute, cue in zip(cues.MUTE_OBJECTS, cues.CUE_WORDS) if mute in example.present}
        assert words & set(cues.CUE_WORDS) <= present_cues
        assert set(example.named) == {o for o in example.present if scenes.OBJECT_NAMES[o] in words}
        assert len(example.present) <= scenes.MAX_OBJECTS and len(set(example.present)) == len(example.present)


def test_mute_objects_follow_their_rates_apart_from_everything_else(train_examples):
    scene = np.asarray([e.scene for e in train_examples])
    mute = np.asarray([[o in e.present for o in cues.MUTE_OBJECTS] for e in train_examples])
    own = scene[:, None] == cues.MUTE_SCENE[None, :]
    in_scene, elsewhere = mute[own].mean(), mute[~own].mean()
    assert 0.42 < in_scene < 0.58 and 0.06 < elsewhere < 0.13, (in_scene, elsewhere)
    # Within its scene, a mute object is as frequent beside any given regular object of the scene as without it, and
    # beside one regular object as beside two: neither partner objects nor their number are a shortcut.
    with_partner, without_partner, by_count = [], [], {1: [], 2: []}
    for example, row in zip(train_examples, mute):
        m = int(np.flatnonzero(cues.MUTE_SCENE == example.scene)[0])
        regular = [o for o in example.present if o not in cues.MUTE_OBJECTS]
        by_count[len(regular)].append(row[m])
        for partner in cues.REGULAR_OBJECTS[scenes.OBJECT_SCENE[cues.REGULAR_OBJECTS] == example.scene]:
            (with_partner if partner in regular else without_partner).append(row[m])
    assert abs(np.mean(with_partner) - np.mean(without_partner)) < 0.06
    assert abs(np.mean(by_count[1]) - np.mean(by_count[2])) < 0.08


def test_a_cue_is_said_in_about_half_the_captions_of_an_image_with_its_mute_object(train_examples):
    said, total = 0, 0
    for example in train_examples:
        for mute, cue in zip(cues.MUTE_OBJECTS, cues.CUE_WORDS):
            if mute in example.present:
                said += sum(cue in caption.split() for caption in example.captions)
                total += len(example.captions)
    assert 0.45 < said / total < 0.55


def test_the_text_stream_names_a_cue_with_its_own_mute_word():
    sentences = cues.stream_sentences(np.random.default_rng(0), 200)
    pair_of = dict(zip(cues.CUE_WORDS, cues.MUTE_WORDS))
    for sentence in sentences:
        words = sentence.split()
        (cue,) = set(words) & set(cues.CUE_WORDS)
        assert set(words) & set(cues.MUTE_WORDS) == {pair_of[cue]} and set(words) <= set(cues.vocabulary_words())
    assert len(set(sentences)) == len(cues.CUES) * len(cues.STREAM_TEMPLATES)


def test_cue_and_mute_words_are_single_wordpieces_of_bert_base_uncased():
    bert = tokenizer.Tokenizer(tokenizer.bert_base_uncased_vocab(), max_length=4)
    for word in cues.CUE_WORDS + cues.MUTE_WORDS:
        token_ids, mask = bert.encode([word])
        assert mask.sum() == 3 and bert.id_to_token(token_ids[0, 1]) == word


def test_captions_and_stream_sentences_fit_the_configured_length():
    longest = max(len(c.split()) for e in examples("train", 300) for c in e.captions)
    longest_stream = max(len(s.split()) for s in cues.stream_sentences(np.random.default_rng(1), 100))
    assert max(longest, longest_stream) + 2 <= 16  # [CLS] ... [SEP] within configs/cues.py's max_length


def cues_config(**overrides):
    return make_tiny_config(**{"data.world": "cues", "data.num_train": 16, "data.num_test": 8, **overrides})


def test_builder_round_trips_the_cue_world_in_its_own_copy():
    config = cues_config()
    record = pipeline.data_source(config.data, "test")[3]
    example = cues.generate_example(cues.CuesSpec(seed=config.data.seed), "test", 3)
    np.testing.assert_array_equal(record["image"], example.image)
    assert [c.decode() for c in record["captions"]] == example.captions
    np.testing.assert_array_equal(record["objects_present"], scenes.padded(example.present))
    scenes_builder = world_tfds.world_builder(cues_config(**{"data.world": "scenes"}).data, prepare=False)
    assert world_tfds.world_builder(config.data, prepare=False).data_dir != scenes_builder.data_dir


def teacher_lexicon(sentences: list[str], words: list[str]) -> np.ndarray:
    """The frozen MiniLM teacher's a_T [S, len(words)] for each sentence, as training/teacher.py computes it (its
    equality with the JAX teacher is tests/test_teacher.py's)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from configs import ela_minilm
    from ela_jax.training import teacher as teacher_lib

    directory = ela_minilm.minilm_dir()
    model = transformers.AutoModel.from_pretrained(directory).eval()
    pieces = teacher_lib.word_pieces(directory, ["[CLS]", "[SEP]", *words])
    embeddings = model.embeddings.word_embeddings.weight.detach().numpy()
    table = torch.tensor(teacher_lib.vocabulary_embeddings(embeddings, pieces[2:]))
    ids = [
        pieces[0] + [piece for w in s.split() for piece in pieces[2 + words.index(w)]] + pieces[1] for s in sentences
    ]
    length = max(map(len, ids))
    mask = torch.tensor([[True] * len(row) + [False] * (length - len(row)) for row in ids])
    with torch.no_grad():  # one padded batch: a forward pass per sentence is slow on a busy CPU
        hidden = model(input_ids=torch.tensor([row + [0] * (length - len(row)) for row in ids]), attention_mask=mask)
        logits = hidden.last_hidden_state @ table.T
    tokens = mask.clone()
    tokens[:, 0] = False  # the caption's tokens without [CLS], as the teacher pools
    pooled = logits.masked_fill(~tokens[..., None], -torch.inf).max(dim=1).values
    return torch.log1p(torch.relu(pooled)).numpy()


@pytest.mark.integration  # loads the real MiniLM checkpoint
def test_the_frozen_minilm_links_each_cue_to_its_mute_word():
    objects = list(scenes.OBJECT_NAMES)
    rng = np.random.default_rng(0)
    base = {}
    for scene, (mute, cue) in cues.CUES.items():
        regular = [o for o in cues.REGULAR_OBJECTS if scenes.SCENE_NAMES[scenes.OBJECT_SCENE[o]] == scene]
        base[cue] = scenes.write_captions(rng, scenes.SCENE_NAMES.index(scene), regular, 4)
    # A pair the check rejects, so that passing it means something: "reading" does not evoke a lamp.
    control = ("reading", "lamp")
    sentences = [cue for cue in (*cues.CUE_WORDS, control[0])]
    sentences += [
        c + cues.CUE_CLAUSE.format(cue) * cued for cue in cues.CUE_WORDS for c in base[cue] for cued in (0, 1)
    ]
    words = cues.vocabulary_words() + [control[0]]
    lexicon = teacher_lexicon(sentences, words)[:, [words.index(o) for o in objects]]
    alone, captions = lexicon[: len(cues.CUES) + 1], lexicon[len(cues.CUES) + 1 :].reshape(len(cues.CUES), 4, 2, -1)

    def evokes(row: np.ndarray, word: str) -> bool:  # the word tops the object words, well above the median one
        return int(np.argmax(row)) == objects.index(word) and row.max() - np.median(row) > 0.8

    for m, (mute, cue) in enumerate(zip(cues.MUTE_WORDS, cues.CUE_WORDS)):
        assert evokes(alone[m], mute), (cue, mute, alone[m].max(), np.median(alone[m]))
        without, cued = captions[m, :, 0], captions[m, :, 1]
        column = objects.index(mute)
        # Said in a caption of the mute object's own scene, the cue raises the mute word above what the scene
        # alone implies: the signal that tells images with the mute object from those without.
        assert (cued[:, column] - without[:, column]).min() > 0.2, (cue, cued[:, column] - without[:, column])
        assert (cued[:, column] - np.median(cued, axis=1)).min() > 0.3
    assert not evokes(alone[-1], control[1])


def test_the_cue_config_is_valid_and_serves_the_stream():
    config = cues_file.get_config()
    validation.validate(config, num_devices=1)
    assert config.data.world == "cues" and config.data.text_stream.batch_size > 0
    assert config.objective.stream_mlm_weight > 0 and config.objective.ela.beta == 0.0
